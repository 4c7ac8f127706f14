//! One client's life: encryption, login ([`login`]: startup packet,
//! authentication), the welcome, then idle <-> bound to a backend until it
//! leaves.
//!
//! The byte pumping while bound is [`crate::relay`]'s; lending backends is
//! [`crate::pool`]'s. This file decides when to borrow and what to return.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::Instrument;

use crate::config::{Config, DatabaseConfig, PoolMode};
use crate::error::{Error, Result, Side};
use crate::pool::Pool;
use crate::pooler::Pooler;
use crate::protocol::startup::StartupPacket;
use crate::protocol::write::{self, Severity};
use crate::protocol::TransactionStatus;
use crate::registry::{ClientEntry, NewClient};
use crate::relay::{Outcome, Relay, RelaySettings};
use crate::session::{self, Session};
use crate::stream::{Conn, Stream};

mod login;

use login::{console, login, read_startup, Encryption, Login};
pub use login::{parse_startup, Startup};

/// Serves one accepted connection to its end. Never panics on input; every
/// failure ends in an ErrorResponse where the socket still works.
pub async fn serve(pooler: Arc<Pooler>, stream: Stream, peer: String) {
    let span = tracing::info_span!("client", client_addr = %peer, user = tracing::field::Empty, database = tracing::field::Empty);
    async {
        let login_deadline = tokio::time::Instant::now() + pooler.config().client_login_timeout;
        let acceptor = pooler.acceptor();
        let negotiated = tokio::time::timeout_at(
            login_deadline,
            // Boxed, like the other login steps: a client's task then stays
            // small for its whole idle life (see `serve_queries`).
            Box::pin(crate::tls::accept::negotiate(stream, acceptor.as_deref())),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Error::ClientTls(
                "timed out before the handshake ended (client_login_timeout)".into(),
            ))
        });
        let (mut conn, tls) = match negotiated {
            Ok(negotiated) => negotiated,
            Err(e) => return log_failure(&e),
        };
        let encryption = Encryption {
            acceptor: acceptor.as_deref(),
            tls: tls.as_ref(),
        };
        if let Err(e) = run(&pooler, &mut conn, &peer, encryption, login_deadline).await {
            if e.client_reachable() {
                let class = e.sqlstate().get(..2).unwrap_or("XX").to_owned();
                *pooler
                    .stats
                    .errors
                    .lock()
                    .unwrap()
                    .entry(class)
                    .or_default() += 1;
            }
            report(&mut conn, &e).await;
        }
    }
    .instrument(span)
    .await
}

async fn report(conn: &mut Conn, e: &Error) {
    log_failure(e);
    // Inside a message that will never be finished, an ErrorResponse would
    // be read as that message's bytes: the client only sees a close.
    if e.client_reachable() && !conn.mid_message {
        conn.wbuf.clear();
        write::error_response(
            &mut conn.wbuf,
            Severity::Fatal,
            e.sqlstate(),
            &e.client_message(),
        );
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn.flush()).await;
    }
}

fn log_failure(e: &Error) {
    match (e.side(), e) {
        (_, Error::ClientGone | Error::ClientIo(_)) => {
            tracing::debug!(error = %e, "client connection ended")
        }
        (_, Error::ClientTls(why)) => {
            tracing::warn!(event = "tls_handshake_failed", error = %why, "TLS handshake with client failed")
        }
        (_, Error::AuthFailed { .. }) => {
            tracing::warn!(event = "login_failed", sqlstate = e.sqlstate(), error = %e, "login failed")
        }
        (Side::Client, _) => {
            tracing::info!(event = "client_error", sqlstate = e.sqlstate(), error = %e, "client error")
        }
        (Side::Pooler, _) => {
            tracing::warn!(event = "client_refused", sqlstate = e.sqlstate(), error = %e, "client refused")
        }
        (Side::Backend, _) => {
            tracing::warn!(event = "backend_error", sqlstate = e.sqlstate(), error = %e, "backend error")
        }
    }
}

/// Decrements the pool's client count when the client ends.
struct InPool<'a>(&'a Pool);

impl Drop for InPool<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements the client count when a counted client ends.
struct Counted<'a>(&'a Pooler);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run(
    pooler: &Arc<Pooler>,
    conn: &mut Conn,
    peer: &str,
    encryption: Encryption<'_>,
    login_deadline: tokio::time::Instant,
) -> Result<()> {
    let config = &pooler.config();
    let packet =
        tokio::time::timeout_at(login_deadline, read_startup(conn, encryption.tls.is_some()))
            .await
            .map_err(|_| Error::LoginTimeout)??;
    let startup = match packet {
        StartupPacket::Cancel {
            process_id,
            secret_key,
        } => {
            Box::pin(pooler.cancels.cancel(process_id, secret_key)).await;
            return Ok(());
        }
        StartupPacket::Startup { minor, params } => parse_startup(minor, params, config)?,
        StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
            return Err(Error::ClientProtocol(
                "unexpected second encryption request".into(),
            ))
        }
    };
    let span = tracing::Span::current();
    span.record("user", startup.user.as_str());
    span.record("database", startup.database.as_str());
    encryption.check(conn, &startup.user)?;
    let how = Login {
        deadline: login_deadline,
        channel_binding: encryption.channel_binding(),
    };

    if crate::admin::DATABASES.contains(&startup.database.as_str()) {
        return Box::pin(console(pooler, conn, &startup, peer, how)).await;
    }
    if pooler.clients.fetch_add(1, Ordering::Relaxed) >= config.max_client_conn {
        pooler.clients.fetch_sub(1, Ordering::Relaxed);
        pooler
            .stats
            .max_client_conn_refusals
            .fetch_add(1, Ordering::Relaxed);
        return Err(Error::TooManyClients);
    }
    let _counted = Counted(pooler);

    let db = config
        .database(&startup.database)
        .ok_or_else(|| Error::NoSuchDatabase(startup.database.clone()))?;
    let proof = Box::pin(login(pooler, conn, &startup.user, peer, how)).await?;
    let pool = pooler.pool(db, &startup.user, &proof);
    let mut session = Box::pin(welcome(conn, config, &pool, &startup)).await?;
    pool.stats.logins.fetch_add(1, Ordering::Relaxed);
    pool.clients.fetch_add(1, Ordering::Relaxed);
    let _in_pool = InPool(&pool);
    if config.log_connections {
        tracing::info!(event = "login", "login");
    }
    let cancel = pooler.cancels.register();
    write::backend_key_data(
        &mut conn.wbuf,
        cancel.slot.process_id,
        cancel.slot.secret_key,
    );
    write::ready_for_query(&mut conn.wbuf, TransactionStatus::Idle);
    conn.flush().await.map_err(Error::ClientIo)?;

    let app_name = session
        .param("application_name")
        .unwrap_or_default()
        .to_owned();
    let listed = pooler.registry.add_client(
        NewClient {
            user: &startup.user,
            database: &startup.database,
            peer,
            application_name: &app_name,
            tls: conn.stream.tls_description(),
            process_id: cancel.slot.process_id,
        },
        &pooler.shutdown,
    );
    let result = serve_queries(
        conn,
        &mut session,
        pooler,
        &pool,
        db,
        &cancel.slot,
        &listed.entry,
    )
    .await;
    if config.log_disconnections {
        tracing::info!(event = "disconnect", "disconnect");
    }
    result
}

/// AuthenticationOk and ParameterStatus, after a successful login. The
/// client's session parameters start as the server's, overridden by what
/// its startup packet asked for.
async fn welcome(
    conn: &mut Conn,
    config: &Config,
    pool: &Pool,
    startup: &Startup,
) -> Result<Session> {
    let server = pool.server_params().await?;
    if startup.minor > 0 || !startup.unknown_protocol_options.is_empty() {
        let unknown: Vec<&str> = startup
            .unknown_protocol_options
            .iter()
            .map(String::as_str)
            .collect();
        write::negotiate_protocol_version(&mut conn.wbuf, crate::protocol::PROTOCOL_V3, &unknown);
    }
    write::authentication_ok(&mut conn.wbuf);
    let mut session = Session::default();
    for (name, value) in server.iter() {
        if session::is_tracked(name, &config.track_extra_parameters) {
            session.set_param(name, value);
        }
    }
    for (name, value) in &startup.params {
        session.set_param(name, value);
    }
    let normalized = normalized_startup(pool, &session, &startup.params, &server).await?;
    for (name, value) in &normalized {
        session.set_param(name, value);
    }
    session.startup = normalized;
    for (name, value) in server.iter() {
        let value = session.param(name).unwrap_or(value);
        write::parameter_status(&mut conn.wbuf, name, value);
    }
    for (name, value) in &session.params {
        if !server.iter().any(|(k, _)| k == name) {
            write::parameter_status(&mut conn.wbuf, name, value);
        }
    }
    Ok(session)
}

/// The client's startup parameters as PostgreSQL spells them (`iso,dmy` is
/// `ISO, DMY`): set once on a backend, which also checks them. A value
/// PostgreSQL refuses fails the login, as it would fail a direct one.
async fn normalized_startup(
    pool: &Pool,
    session: &Session,
    asked: &[(String, String)],
    server: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    // application_name is kept as given; the others are worth a round trip
    // only when they differ from the server's (usually they do not).
    let differs = asked.iter().any(|(k, v)| {
        k != "application_name"
            && server
                .iter()
                .find(|(s, _)| s == k)
                .is_none_or(|(_, sv)| sv != v)
    });
    if !differs {
        return Ok(asked.to_vec());
    }
    let mut backend = pool.lend().await?;
    let mut query = bytes::BytesMut::new();
    if !session.sync_query(&backend.params, &mut query) {
        pool.release(backend, true);
        return Ok(asked.to_vec());
    }
    let sql = crate::protocol::fields::cstr(&query[5..])
        .map(|(q, _)| String::from_utf8_lossy(q).into_owned())
        .unwrap_or_default();
    let result = backend.simple_query(&sql).await;
    let normalized = asked
        .iter()
        .map(|(k, v)| (k.clone(), backend.param(k).unwrap_or(v).to_owned()))
        .collect();
    pool.release(backend, result.is_ok());
    result.map(|()| normalized)
}

/// Idle <-> bound, until the client leaves.
async fn serve_queries(
    conn: &mut Conn,
    session: &mut Session,
    pooler: &Pooler,
    pool: &Arc<Pool>,
    db: &DatabaseConfig,
    cancel: &crate::cancel::CancelSlot,
    me: &ClientEntry,
) -> Result<()> {
    let config = &pooler.config();
    let transaction_mode = db.pool_mode == PoolMode::Transaction;
    let settings = RelaySettings {
        max_packet: config.max_packet_size,
        transaction_mode,
        max_prepared: config.max_prepared_statements,
        extra_tracked: &config.track_extra_parameters,
        stats: &pool.stats,
        idle_transaction_timeout: config.idle_transaction_timeout,
        query_timeout: config.query_timeout,
        client_idle_timeout: config.client_idle_timeout.filter(|_| !transaction_mode),
    };
    // Why a stop token fired: the shutdown, or KILL.
    let stopped = || {
        if pooler.shutdown.drain.is_cancelled() {
            Error::ShuttingDown
        } else {
            Error::Killed
        }
    };
    // Made once: each poll then touches only this client's tokens.
    let stop = me.stop.cancelled();
    let stop_when_idle = me.stop_when_idle.cancelled();
    tokio::pin!(stop, stop_when_idle);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop_when_idle => return Err(stopped()),
            more = idle_wait(conn, config.client_idle_timeout) => if !more? { return Ok(()) },
        }
        me.start_waiting();
        let mut backend = tokio::select! {
            biased;
            b = pool.checkout() => b?,
            _ = &mut stop => return Err(stopped()),
        };
        me.stop_waiting();
        cancel.bind(&backend);
        let mut relay = Relay::new(conn, &mut backend, session, settings);
        let result = tokio::select! {
            biased;
            r = relay.run() => r,
            // Dropping the relay mid-transaction: the backend is closed below.
            _ = &mut stop => Err(stopped()),
        };
        let mid_message = relay.client_mid_message();
        drop(relay);
        cancel.unbind();
        match result {
            Ok(Outcome::Released) => release(pool, backend, true),
            Ok(Outcome::ClientLeft { clean }) => {
                let reusable = clean
                    && (transaction_mode
                        || Box::pin(reset(&mut backend, &config.server_reset_query)).await);
                release(pool, backend, reusable);
                return Ok(());
            }
            Err(e) => {
                release(pool, backend, false);
                if mid_message {
                    conn.mid_message = true;
                } else {
                    // Whole messages still queued go first: the error
                    // then starts at a message boundary.
                    let flush =
                        tokio::time::timeout(std::time::Duration::from_secs(1), conn.flush());
                    let _ = flush.await;
                }
                return Err(e);
            }
        }
    }
}

/// Gives a backend back, once no cancel aimed at this client's query is
/// still on its way to it.
fn release(pool: &Arc<Pool>, backend: crate::backend::Backend, reusable: bool) {
    if !backend.cancel_gate.busy() {
        return pool.release(backend, reusable);
    }
    let pool = pool.clone();
    tokio::spawn(async move {
        let settled = backend.cancel_gate.wait().await;
        pool.release(backend, reusable && settled);
    });
}

/// [`next_message`], up to `client_idle_timeout`.
async fn idle_wait(conn: &mut Conn, limit: Option<std::time::Duration>) -> Result<bool> {
    match limit {
        None => next_message(conn).await,
        Some(limit) => tokio::time::timeout(limit, next_message(conn))
            .await
            .map_err(|_| Error::ClientIdleTimeout)?,
    }
}

/// Waits, unbound, until the client has sent a message header. `false`
/// when it sent Terminate or closed the connection. A client waiting with
/// nothing buffered holds no buffer (an idle client costs little memory).
async fn next_message(conn: &mut Conn) -> Result<bool> {
    while conn.rbuf.len() < 5 {
        if conn.rbuf.is_empty() && !conn.pending_output() {
            conn.release_buffers();
            conn.readable().await.map_err(Error::ClientIo)?;
        }
        match conn.fill().await {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(Error::ClientIo(e)),
        }
    }
    Ok(conn.rbuf[0] != b'X')
}

/// Runs `server_reset_query` on a session-mode backend before reuse.
async fn reset(backend: &mut crate::backend::Backend, query: &str) -> bool {
    if query.is_empty() {
        return true;
    }
    match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        backend.simple_query(query),
    )
    .await
    {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "server_reset_query failed; closing the backend");
            false
        }
        Err(_) => false,
    }
}
