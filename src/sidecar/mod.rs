//! `pgdyno run [--SETTING VALUE]... -- COMMAND [ARGS]...`: pgdyno beside an
//! app in one dyno, as Heroku's PgBouncer buildpack runs PgBouncer
//! (`web: pgdyno run -- gunicorn app:app` in a Procfile).
//!
//! This module owns what is particular to running beside an app: which env
//! vars hold upstream URLs (`DATABASE_URL`, or the variables named in
//! `PGDYNO_URLS`), the databases they become, the URLs the app is started
//! with instead (pointing at pgdyno), forwarding signals to the app, and the
//! order of shutdown. Pooling itself is the plain command's: the same
//! `Config::load`, `Pooler` and `Listeners`.
//!
//! Shutdown order: on SIGTERM the app is told and pgdyno goes on serving,
//! accepting too, since an app finishing its requests and jobs still needs
//! its database. Once the app has exited, pgdyno drains (each client is
//! closed at its next transaction boundary) and exits with the app's exit
//! status. All of it is bounded by `shutdown_timeout` from the first signal:
//! then the app is killed and clients still in a transaction are closed.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Config, ConfigError, DatabaseConfig, Sources, Upstream};
use crate::listener::Listeners;
use crate::pooler::Pooler;
use crate::shutdown::Shutdown;

mod app;
use app::App;

/// The variable pooled when `PGDYNO_URLS` does not say otherwise.
const DEFAULT_URL_VAR: &str = "DATABASE_URL";

/// A prepared `pgdyno run`: the settings (for logging, before `run`) and
/// what the app is started with.
#[derive(Debug)]
pub struct Sidecar {
    pub config: Config,
    command: Vec<String>,
    vars: Vec<UrlVar>,
}

/// One env var holding an upstream URL, and what the app gets instead.
#[derive(Debug, Clone)]
struct UrlVar {
    var: String,
    /// The database name clients use at pgdyno.
    database: String,
    user: Option<String>,
    password: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error(
        "usage: pgdyno run [--SETTING VALUE]... -- COMMAND [ARGS]... (settings: pgdyno --help)"
    )]
    Usage,
    #[error("{var} is not set (pgdyno run pools the URLs in the variables named in PGDYNO_URLS, default DATABASE_URL)")]
    MissingUrl { var: String },
    #[error("invalid value for {var}: {reason}")]
    InvalidUrl { var: String, reason: String },
    #[error("{0} cannot be used with pgdyno run: the upstreams are the URLs in DATABASE_URL and the variables named in PGDYNO_URLS")]
    UpstreamGiven(&'static str),
    #[error("the config file's [databases] table cannot be used with pgdyno run: the databases are the URLs in DATABASE_URL and the variables named in PGDYNO_URLS")]
    DatabasesTable,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}{what}: {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the app ({command}): {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl SidecarError {
    /// 2 for a bad command line, setting or URL (as the plain command), 127
    /// or 126 when the app cannot be started (as a shell), else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            SidecarError::Usage
            | SidecarError::MissingUrl { .. }
            | SidecarError::InvalidUrl { .. }
            | SidecarError::UpstreamGiven(_)
            | SidecarError::DatabasesTable
            | SidecarError::Config(_) => 2,
            SidecarError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => 127,
            SidecarError::Spawn { .. } => 126,
            SidecarError::Listen { .. } | SidecarError::Io(_) => 1,
        }
    }
}

impl Sidecar {
    /// Settings from `sources` (as the plain command gathers them: file,
    /// env, flags), databases from the URL variables in `sources.env`;
    /// `command` is what followed `--`. Nothing is started yet.
    pub fn prepare(mut sources: Sources, command: Vec<String>) -> Result<Sidecar, SidecarError> {
        if command.is_empty() {
            return Err(SidecarError::Usage);
        }
        if sources.flags.iter().any(|(k, _)| k == "upstream") {
            return Err(SidecarError::UpstreamGiven("--upstream"));
        }
        if env_value(&sources.env, "PGDYNO_UPSTREAM").is_some() {
            return Err(SidecarError::UpstreamGiven("PGDYNO_UPSTREAM"));
        }
        let names = url_var_names(env_value(&sources.env, "PGDYNO_URLS"));
        // PGDYNO_URLS is this command's own, not a setting Config knows.
        sources.env.retain(|(k, _)| k != "PGDYNO_URLS");

        let mut base: Option<Config> = None;
        let mut databases: Vec<DatabaseConfig> = Vec::new();
        let mut vars = Vec::new();
        for var in names {
            let url = env_value(&sources.env, &var)
                .ok_or_else(|| SidecarError::MissingUrl { var: var.clone() })?
                .to_owned();
            let upstream = parse_url(&var, &url)?;
            // The same upstream under two names (Heroku's DATABASE_URL and
            // HEROKU_POSTGRESQL_<COLOR>_URL) shares one pool.
            let database = match databases.iter().find(|d| d.upstream == upstream) {
                Some(same) => same.name.clone(),
                None => {
                    let (config, mut db) = load_with_upstream(&sources, &url)?;
                    let name = free_name(&db.name, &databases);
                    db.name = name.clone();
                    base.get_or_insert(config);
                    databases.push(db);
                    name
                }
            };
            vars.push(UrlVar {
                var,
                database,
                user: upstream.user,
                password: upstream.password,
            });
        }
        // `names` is never empty, so neither is `databases`.
        let mut config = base.ok_or(SidecarError::Usage)?;
        config.databases = databases;

        Ok(Sidecar {
            config,
            command,
            vars,
        })
    }

    /// Pools, starts the app once pgdyno listens, passes signals on, and
    /// stops after the app; returns the exit status pgdyno should exit with
    /// (the app's, or 128 + the signal that killed it).
    pub async fn run(self) -> Result<i32, SidecarError> {
        let Sidecar {
            config,
            command,
            vars,
        } = self;
        let mut signals = Signals::install()?;
        let (pooler, local, mut server) = start_pooling(config).await?;
        let databases = pooler
            .config()
            .databases
            .iter()
            .map(|d| format!("{} -> {}", d.name, d.upstream.redacted()))
            .collect();
        let sslmode = match pooler.config().client_tls.sslmode.requires_tls() {
            true => "require",
            false => "disable",
        };
        let mut app = spawn_app(&command, &vars, databases, (local, sslmode))?;
        let shutdown = pooler.shutdown.clone();
        let mut stop = Stopping {
            timeout: pooler.config().shutdown_timeout,
            ..Stopping::default()
        };
        let status = stop
            .supervise(&mut app, &mut signals, &shutdown, &mut server)
            .await?;
        let code = exit_code(status);
        stop.drain(&shutdown, &mut signals, server, code).await;
        Ok(code)
    }
}

/// What the plain `pgdyno` command does before it waits for signals:
/// pools, listeners, metrics, the stats ticker. Returns the address
/// clients reach and the task serving them.
async fn start_pooling(
    mut config: Config,
) -> Result<(Arc<Pooler>, SocketAddr, JoinHandle<()>), SidecarError> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    crate::autosize::resolve(&mut config).await?;
    // The recorder must exist before pools register their histograms.
    let metrics = config
        .metrics_listen
        .map(|addr| (addr, crate::metrics::install()));
    let pooler = Pooler::new(config)?;
    let listen = pooler.config().listen;
    let listeners = Listeners::bind(&pooler)
        .await
        .map_err(|source| SidecarError::Listen {
            addr: listen,
            what: "",
            source,
        })?;
    let local = listeners.local_addr()?;
    if let Some((addr, handle)) = metrics {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SidecarError::Listen {
                addr,
                what: " (metrics_listen)",
                source,
            })?;
        tracing::info!(listen = %addr, "metrics and health endpoints listening");
        tokio::spawn(crate::metrics::serve(listener, pooler.clone(), handle));
    }
    tokio::spawn(pooler.clone().keep_stats());
    tokio::spawn(pooler.clone().forget_unused_auto_pools());
    let server = tokio::spawn(listeners.serve(pooler.clone()));
    Ok((pooler, local, server))
}

impl UrlVar {
    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/DBNAME?sslmode=disable`,
    /// percent-encoded; without the password unless `with_password`.
    /// `sslmode=require` when pgdyno refuses plaintext clients.
    fn local_url(&self, local: SocketAddr, with_password: bool, sslmode: &str) -> String {
        let host = match local.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
            IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_owned(),
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let userinfo = match (&self.user, &self.password) {
            (Some(user), Some(password)) if with_password => {
                format!("{}:{}@", encode(user), encode(password))
            }
            (Some(user), _) => format!("{}@", encode(user)),
            (None, _) => String::new(),
        };
        format!(
            "postgres://{userinfo}{host}:{}/{}?sslmode={sslmode}",
            local.port(),
            encode(&self.database)
        )
    }
}

/// Starts the app with each URL variable pointing at pgdyno on `local`.
fn spawn_app(
    command: &[String],
    vars: &[UrlVar],
    databases: Vec<String>,
    (local, sslmode): (SocketAddr, &str),
) -> Result<App, SidecarError> {
    let Some((program, args)) = command.split_first() else {
        return Err(SidecarError::Usage);
    };
    let rewritten: Vec<(&str, String)> = vars
        .iter()
        .map(|v| (v.var.as_str(), v.local_url(local, true, sslmode)))
        .collect();
    tracing::info!(
        listen = %local,
        databases = ?databases,
        rewritten = %vars.iter().map(|v| format!("{}={}", v.var, v.local_url(local, false, sslmode))).collect::<Vec<_>>().join(" "),
        command = %program,
        "pgdyno listening; starting the app with its database URLs pointing at pgdyno"
    );
    App::spawn(Command::new(program).args(args).envs(rewritten)).map_err(|source| {
        SidecarError::Spawn {
            command: program.clone(),
            source,
        }
    })
}

/// Where the app stands in stopping, and the clock that bounds it.
#[derive(Default)]
struct Stopping {
    timeout: Duration,
    /// `shutdown_timeout` after the first stop signal.
    deadline: Option<Instant>,
    /// Close clients at once when the app is gone (SIGQUIT, a second signal).
    fast: bool,
    /// The app was killed at the deadline.
    killed: bool,
    /// The listeners stopped serving on their own (before the app exited).
    server_done: bool,
}

impl Stopping {
    /// Passes signals on to the app until it exits, meanwhile serving as
    /// usual; kills it at the deadline.
    ///
    /// # Cancel safety
    /// Every branch is cancel-safe (`App::wait`, `Signal::recv`, a
    /// `JoinHandle`, a sleep): a branch not taken loses nothing, and the
    /// handlers, which may await, run after the `select!` has chosen.
    async fn supervise(
        &mut self,
        app: &mut App,
        signals: &mut Signals,
        shutdown: &Shutdown,
        server: &mut JoinHandle<()>,
    ) -> io::Result<ExitStatus> {
        loop {
            let deadline = self.deadline;
            let passed = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = app.wait() => return status,
                _ = signals.term.recv() => self.stop_signal(app, "TERM").await,
                _ = signals.int.recv() => self.stop_signal(app, "INT").await,
                _ = signals.quit.recv() => {
                    self.fast = true;
                    self.stop_signal(app, "QUIT").await;
                }
                _ = signals.hup.recv() => app.signal("HUP").await,
                _ = &mut *server, if !self.server_done => {
                    self.server_done = true;
                    tracing::warn!("pgdyno stopped serving: asking the app to stop");
                    self.stop_signal(app, "TERM").await;
                }
                () = passed, if !self.killed => {
                    tracing::warn!(
                        timeout = ?self.timeout,
                        "the app did not exit within shutdown_timeout: killing it and closing clients"
                    );
                    self.killed = true;
                    shutdown.now();
                    app.signal("KILL").await;
                }
            }
        }
    }

    /// SIGTERM, SIGINT or SIGQUIT: tell the app; start the clock. A second
    /// one means hurry: clients are closed as soon as the app is gone.
    async fn stop_signal(&mut self, app: &App, name: &'static str) {
        if self.deadline.is_some() {
            self.fast = true;
        }
        let deadline = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + self.timeout);
        tracing::info!(
            signal = %format!("SIG{name}"),
            remaining = ?deadline.saturating_duration_since(Instant::now()),
            "passing the signal to the app; serving until it exits"
        );
        app.signal(name).await;
    }

    /// After the app: stop accepting, close each client at its next
    /// transaction boundary (at once if in a hurry), give up at the deadline.
    async fn drain(
        &self,
        shutdown: &Shutdown,
        signals: &mut Signals,
        server: JoinHandle<()>,
        code: i32,
    ) {
        let remaining = match self.deadline {
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => self.timeout,
        };
        tracing::info!(
            status = code,
            ?remaining,
            "the app exited; closing clients as their transactions end"
        );
        if self.fast {
            shutdown.now();
        } else {
            shutdown.begin(remaining);
        }
        if !self.server_done {
            wait_for_listeners(shutdown, signals, server, remaining).await;
        }
        tracing::info!(status = code, "pgdyno stopped");
    }
}

/// Waits for the listeners' drain (they end at most a second after the
/// close), closing at once on another stop signal.
async fn wait_for_listeners(
    shutdown: &Shutdown,
    signals: &mut Signals,
    server: JoinHandle<()>,
    remaining: Duration,
) {
    let bounded = tokio::time::timeout(remaining + Duration::from_secs(2), server);
    let mut bounded = std::pin::pin!(bounded);
    loop {
        tokio::select! {
            _ = &mut bounded => break,
            _ = signals.term.recv() => shutdown.now(),
            _ = signals.int.recv() => shutdown.now(),
            _ = signals.quit.recv() => shutdown.now(),
            _ = signals.hup.recv() => {}
        }
    }
}

/// The signals pgdyno passes on. Installed before anything else, so that
/// none of them kills pgdyno behind the app's back.
struct Signals {
    term: Signal,
    int: Signal,
    quit: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// The app's exit code, or 128 + the signal that ended it, as shells do.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.trim().is_empty())
}

/// `PGDYNO_URLS`: variable names separated by spaces or commas, like the
/// buildpack's `PGBOUNCER_URLS`; `DATABASE_URL` when unset.
fn url_var_names(list: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in list
        .unwrap_or(DEFAULT_URL_VAR)
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|n| !n.is_empty())
    {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    if names.is_empty() {
        names.push(DEFAULT_URL_VAR.to_owned());
    }
    names
}

/// Checks `url` with the config's own parser (default settings, so any
/// error is the URL's) and returns it parsed.
fn parse_url(var: &str, url: &str) -> Result<Upstream, SidecarError> {
    let sources = Sources {
        flags: vec![("upstream".to_owned(), url.to_owned())],
        ..Sources::default()
    };
    let invalid = |reason: &str| SidecarError::InvalidUrl {
        var: var.to_owned(),
        reason: redact(
            reason
                .strip_prefix("invalid value for upstream: ")
                .unwrap_or(reason),
            url,
        ),
    };
    let mut config = Config::load(&sources).map_err(|e| invalid(&e.0))?;
    match config.databases.pop() {
        Some(db) => Ok(db.upstream),
        None => Err(invalid("no database")),
    }
}

/// The whole configuration with `url` as the upstream, and that upstream's
/// database (with the pool settings of the file, env and flags).
fn load_with_upstream(
    sources: &Sources,
    url: &str,
) -> Result<(Config, DatabaseConfig), SidecarError> {
    let mut flags = sources.flags.clone();
    flags.push(("upstream".to_owned(), url.to_owned()));
    let mut config = Config::load(&Sources {
        file: sources.file.clone(),
        flags,
        env: sources.env.clone(),
    })?;
    // The upstream's database comes last; any other is from [databases].
    let db = config.databases.pop().ok_or(SidecarError::Usage)?;
    if !config.databases.is_empty() {
        return Err(SidecarError::DatabasesTable);
    }
    Ok((config, db))
}

/// `name`, or `name_2`, `name_3`... if taken: two URLs naming the same
/// database on different servers get two names, as the buildpack's db1, db2.
fn free_name(name: &str, taken: &[DatabaseConfig]) -> String {
    let is_taken = |n: &str| taken.iter().any(|d| d.name == n);
    if !is_taken(name) {
        return name.to_owned();
    }
    (2..)
        .map(|i| format!("{name}_{i}"))
        .find(|n| !is_taken(n))
        .unwrap_or_default()
}

/// Hides the URL's password should a parse error quote it.
fn redact(reason: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => reason.replace(p, "********"),
        None => reason.to_owned(),
    }
}

/// Percent-encodes all but URL-unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
