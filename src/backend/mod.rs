//! One connection to PostgreSQL: connect, log in, and what the login told
//! us (ParameterStatus values, BackendKeyData).
//!
//! What a backend is used for is the pool's and the relay's business.
//! `login` holds the login exchange, `query` pgdyno's own queries.

mod login;
mod query;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use crate::auth::scram::{KeyCache, ScramKeys};
use crate::cancel::{BackendKey, CancelGate};
use crate::clock::{self, Micros};
use crate::config::{Host, LoadBalance, SessionAttrs, TcpOptions, Upstream};
use crate::error::{Error, Result};
use crate::prepared::BackendStatements;
use crate::protocol::fields;
use crate::registry::{Listed, Registry, ServerEntry};
use crate::relay::Translation;
use crate::stream::{Conn, Stream};
use crate::tls::Connector;

/// Messages during login (and answers to pgdyno's own queries) are small;
/// a huge one means we are not talking to PostgreSQL.
const MAX_LOGIN_MESSAGE: usize = 1024 * 1024;

/// Everything needed to open a backend for one pool.
#[derive(Debug)]
pub struct Target {
    /// The database name clients use (the pool's).
    pub database: String,
    pub registry: Arc<Registry>,
    /// The PostgreSQL role to log in as.
    pub user: String,
    /// Where and with what to log in; replaced by a reload that changes
    /// them (see [`Target::set_endpoint`]).
    endpoint: RwLock<Arc<Endpoint>>,
    /// How to encrypt; replaced on reload (new backends use the new one).
    pub tls: RwLock<Arc<Connector>>,
    /// Keepalive and the like for new sockets; replaced on reload.
    pub tcp: RwLock<TcpOptions>,
    /// SCRAM keys derived from the password, so that PBKDF2 runs once
    /// per server secret rather than once per backend.
    pub scram_cache: Arc<KeyCache>,
    /// `connect_query`: run on each new backend before a client gets it;
    /// replaced on reload.
    pub connect_query: RwLock<String>,
    /// Cancels under way for this pool's backends.
    pub cancels: crate::cancel::CancelCounts,
    /// Where the next backend starts on a list of several hosts
    /// (`load_balance_hosts = round-robin`).
    next_host: AtomicUsize,
}

/// Where a pool's backends connect and how they prove themselves: what a
/// reload may change under a pool (the database's upstream, the user's
/// password).
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub upstream: Upstream,
    /// The database to ask PostgreSQL for.
    pub dbname: String,
    pub credential: Credential,
}

impl Endpoint {
    /// Where a database's backends go, logging in with `credential`.
    pub fn of(db: &crate::config::DatabaseConfig, credential: Credential) -> Endpoint {
        Endpoint {
            upstream: db.upstream.clone(),
            dbname: db
                .upstream
                .dbname
                .clone()
                .unwrap_or_else(|| db.name.clone()),
            credential,
        }
    }
}

impl Target {
    pub fn new(
        database: &str,
        user: &str,
        endpoint: Endpoint,
        registry: Arc<Registry>,
        tls: Arc<Connector>,
        tcp: TcpOptions,
        connect_query: String,
    ) -> Target {
        Target {
            database: database.to_owned(),
            registry,
            user: user.to_owned(),
            endpoint: RwLock::new(Arc::new(endpoint)),
            tls: RwLock::new(tls),
            tcp: RwLock::new(tcp),
            scram_cache: Default::default(),
            connect_query: RwLock::new(connect_query),
            cancels: Default::default(),
            next_host: AtomicUsize::new(0),
        }
    }

    pub fn connector(&self) -> Arc<Connector> {
        self.tls.read().unwrap().clone()
    }

    /// Where new backends go, and with what credential.
    pub fn endpoint(&self) -> Arc<Endpoint> {
        self.endpoint.read().unwrap().clone()
    }

    /// Points new backends at `endpoint`. Returns whether it differs from
    /// the one before (then the backends already open are from the old one;
    /// the SCRAM keys derived from an old password are forgotten).
    pub fn set_endpoint(&self, endpoint: Endpoint) -> bool {
        let mut current = self.endpoint.write().unwrap();
        if **current == endpoint {
            return false;
        }
        if current.credential != endpoint.credential {
            self.scram_cache.forget();
        }
        *current = Arc::new(endpoint);
        true
    }

    /// Opens a connection to `upstream` as [`open`] does, with the
    /// current TLS and TCP settings.
    pub async fn open(&self, upstream: &Upstream) -> Result<(Stream, Option<Vec<u8>>)> {
        let tcp = *self.tcp.read().unwrap();
        open(upstream, &self.connector(), &tcp).await
    }
}

/// How pgdyno proves itself to PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    None,
    Password(String),
    /// `md5` + md5hex(password + user): enough for md5 logins.
    Md5(String),
    /// A ClientKey from a client's SCRAM login: enough for SCRAM logins to a
    /// server that stores the same secret.
    ScramKeys(ScramKeys),
}

/// A live, logged-in PostgreSQL connection. Boxed: it changes hands (pool,
/// client, pool) at every transaction, and moving a pointer costs nothing
/// where moving the whole state copied 288 bytes each time.
pub struct Backend(Box<Live>);

impl std::ops::Deref for Backend {
    type Target = Live;

    fn deref(&self) -> &Live {
        &self.0
    }
}

impl std::ops::DerefMut for Backend {
    fn deref_mut(&mut self) -> &mut Live {
        &mut self.0
    }
}

/// A [`Backend`]'s state.
pub struct Live {
    pub conn: Conn,
    pub id: u64,
    /// ParameterStatus values from login, updated as the relay sees more.
    pub params: Vec<(String, String)>,
    /// The client parameter list (see [`crate::session::Params`]) these
    /// `params` were last found to match; cleared whenever PostgreSQL
    /// reports a change. The next client with that same list needs no
    /// comparison.
    pub synced: Option<crate::session::Params>,
    /// Named statements pgdyno prepared here (transaction mode).
    pub statements: BackendStatements,
    pub process_id: i32,
    pub secret_key: i32,
    /// Cancels forwarded to this backend and not yet done.
    pub cancel_gate: Arc<CancelGate>,
    pub created: Micros,
    pub last_used: Micros,
    pub target: Arc<Target>,
    /// This backend's line in SHOW SERVERS, removed when it is dropped;
    /// it holds the pool generation the backend was opened in.
    pub listed: Option<Listed<ServerEntry>>,
    /// The relay's state for the stretch this backend serves. Kept here
    /// rather than in the client's task: the client's future stays small
    /// without a box per transaction, and the pipeline's queue is
    /// allocated once.
    pub(crate) stretch: Translation,
}

impl Live {
    /// The pool generation it was opened in (see RECONNECT); 0 for one
    /// outside any pool.
    pub fn generation(&self) -> u64 {
        self.listed.as_ref().map_or(0, |l| l.entry.generation)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Backend {
    /// Connects and logs in, within `timeout` for each host tried.
    /// `generation`: the pool's as the connection began (see RECONNECT).
    ///
    /// Of several hosts, it starts where `load_balance_hosts` says and goes
    /// on down the list past one it cannot reach, that cannot take a
    /// connection now, or that is not what `target_session_attrs` asks for
    /// (as libpq does; a refused login stops it).
    pub async fn connect(
        target: Arc<Target>,
        timeout: Duration,
        generation: u64,
    ) -> Result<Backend> {
        let all = target.endpoint();
        let hosts = 1 + all.upstream.more_hosts.len();
        let wanted = all.upstream.session_attrs;
        if hosts == 1 && wanted == SessionAttrs::Any {
            return Backend::connect_to(target, all, timeout, generation, wanted).await;
        }
        let first = match all.upstream.load_balance {
            LoadBalance::RoundRobin => target.next_host.fetch_add(1, Ordering::Relaxed),
            LoadBalance::Disable => 0,
        };
        // prefer-standby: a standby on any host, else any server.
        let passes = match wanted {
            SessionAttrs::PreferStandby => [Some(SessionAttrs::Standby), Some(SessionAttrs::Any)],
            one => [Some(one), None],
        };
        let total = passes.iter().flatten().count() * hosts;
        let mut tried = 0;
        for attrs in passes.into_iter().flatten() {
            for i in 0..hosts {
                tried += 1;
                let at = Arc::new(Endpoint {
                    upstream: all.upstream.only_host(first.wrapping_add(i)),
                    ..(*all).clone()
                });
                let attempt =
                    Backend::connect_to(target.clone(), at.clone(), timeout, generation, attrs);
                match attempt.await {
                    // Passing over a server of the wrong kind is routine.
                    Err(e @ Error::BackendUnsuitable(_)) if tried < total => {
                        tracing::debug!(upstream = %at.upstream.redacted(), error = %e, "trying the next host");
                    }
                    Err(e) if tried < total && e.another_host_may_do() => {
                        tracing::warn!(
                            upstream = %at.upstream.redacted(),
                            error = %e,
                            "backend connection failed; trying the next host"
                        );
                    }
                    done => return done,
                }
            }
        }
        unreachable!("every pass tries at least one host")
    }

    /// [`Backend::connect`] to one host, which must be as `attrs` says.
    async fn connect_to(
        target: Arc<Target>,
        at: Arc<Endpoint>,
        timeout: Duration,
        generation: u64,
        attrs: SessionAttrs,
    ) -> Result<Backend> {
        let login = async {
            let (stream, binding) = target.open(&at.upstream).await?;
            let mut backend = login::login(Conn::new(stream), target.clone(), &at, binding).await?;
            if attrs != SessionAttrs::Any {
                backend.check_session_attrs(attrs)?;
            }
            let query = target.connect_query.read().unwrap().clone();
            if !query.is_empty() {
                backend.simple_query(&query).await?;
            }
            Ok(backend)
        };
        match tokio::time::timeout(timeout, login).await {
            Ok(Ok(mut backend)) => {
                let (addr, port) = match &at.upstream.host {
                    Host::Tcp(h) => (h.clone(), at.upstream.port),
                    Host::Unix(dir) => (dir.display().to_string(), at.upstream.port),
                };
                backend.listed = Some(target.registry.add_server(ServerEntry {
                    id: backend.id,
                    user: target.user.clone(),
                    database: target.database.clone(),
                    addr,
                    port,
                    connect_time_us: clock::now().epoch_us(),
                    remote_pid: backend.process_id,
                    generation,
                    tls: backend.conn.stream.tls_description(),
                    active: Default::default(),
                    request_time_us: Default::default(),
                    key: BackendKey {
                        secret_key: backend.secret_key,
                        target: Arc::downgrade(&target),
                        endpoint: at.clone(),
                        gate: backend.cancel_gate.clone(),
                    },
                }));
                Ok(backend)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::BackendConnect(format!(
                "timed out after {timeout:?} (server_connect_timeout)"
            ))),
        }
    }

    /// Whether the idle socket has something to say: PostgreSQL sent an
    /// error (it is shutting down) or closed it. Such a backend is useless.
    /// Costs no system call: it reads the reactor's readiness state.
    pub fn has_pending_input(&self) -> bool {
        !self.conn.rbuf.is_empty() || self.conn.stream.readable()
    }

    /// Whether the server is what `target_session_attrs` asks for, from
    /// what it reported at login. A server that is not: the next host may
    /// be. One that reports neither (before PostgreSQL 14) cannot tell.
    fn check_session_attrs(&self, attrs: SessionAttrs) -> Result<()> {
        let on = |name| self.param(name).map(|v| v == "on");
        let (Some(standby), Some(read_only)) =
            (on("in_hot_standby"), on("default_transaction_read_only"))
        else {
            return Err(Error::BackendRejected {
                code: "08004".into(),
                message: "target_session_attrs needs PostgreSQL 14 or later \
                          (the server did not report in_hot_standby)"
                    .into(),
            });
        };
        if attrs.accepts(standby, read_only) {
            return Ok(());
        }
        let is = match (standby, read_only) {
            (true, _) => "a hot standby",
            (false, true) => "read-only (default_transaction_read_only)",
            (false, false) => "a read-write primary",
        };
        Err(Error::BackendUnsuitable(format!(
            "the server is {is}, not {} (target_session_attrs)",
            attrs.name()
        )))
    }

    /// Marks the backend lent (true) or idle (false) in SHOW SERVERS.
    pub fn set_active(&self, active: bool, now: Micros) {
        if let Some(l) = &self.listed {
            l.entry.set_active(active, now);
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Records a ParameterStatus value.
pub fn set_param(params: &mut Vec<(String, String)>, name: &str, value: &str) {
    match params.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value.to_owned(),
        None => params.push((name.to_owned(), value.to_owned())),
    }
}

/// Opens a connection to PostgreSQL, encrypted as `tls` says, without
/// logging in (for logins and cancels). Over TLS, also returns the server
/// certificate's channel binding data.
pub async fn open(
    upstream: &Upstream,
    tls: &Connector,
    tcp: &TcpOptions,
) -> Result<(Stream, Option<Vec<u8>>)> {
    let connect_err =
        |e: std::io::Error| Error::BackendConnect(format!("{}: {e}", upstream.redacted()));
    match &upstream.host {
        Host::Tcp(host) => {
            let stream = TcpStream::connect((host.as_str(), upstream.port))
                .await
                .map_err(connect_err)?;
            crate::stream::set_tcp_options(&stream, tcp).map_err(connect_err)?;
            tls.negotiate(stream).await
        }
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{}", upstream.port));
            let stream = UnixStream::connect(path).await.map_err(connect_err)?;
            Ok((Stream::Unix(stream), None))
        }
    }
}

/// An ErrorResponse from PostgreSQL as an error (`fallback`: the message
/// if it has none).
pub(crate) fn rejected(body: &[u8], fallback: &str) -> Error {
    Error::BackendRejected {
        code: fields::error_field(body, b'C')
            .unwrap_or("XX000")
            .to_owned(),
        message: fields::error_field(body, b'M')
            .unwrap_or(fallback)
            .to_owned(),
    }
}

pub(crate) fn io_err(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::BackendGone,
        std::io::ErrorKind::InvalidData => Error::BackendProtocol(e.to_string()),
        _ => Error::BackendIo(e),
    }
}
