//! One client's life: encryption, login ([`login`]: startup packet,
//! authentication), the welcome, then idle <-> bound to a backend until it
//! leaves ([`bound`]: waiting for the next transaction, borrowing a
//! backend, giving it back).
//!
//! The byte pumping while bound is [`crate::relay`]'s; lending backends is
//! [`crate::pool`]'s. This file decides when to borrow and what to return.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::Instrument;

use crate::config::Config;
use crate::error::{Error, Result, Side};
use crate::pool::Pool;
use crate::pooler::Pooler;
use crate::protocol::startup::StartupPacket;
use crate::protocol::write::{self, Severity};
use crate::protocol::TransactionStatus;
use crate::registry::{ClientEntry, Listed, NewClient};
use crate::session::{self, Session};
use crate::stream::{Conn, Stream};

mod bound;
mod login;

use bound::serve_queries;
use login::{console, login, read_startup, Encryption, Login};
pub use login::{parse_startup, Startup};

/// Serves one accepted connection to its end. Never panics on input; every
/// failure ends in an ErrorResponse where the socket still works.
pub async fn serve(pooler: Arc<Pooler>, stream: Stream, peer: String) {
    let span = tracing::info_span!("client", client_addr = %peer, user = tracing::field::Empty, database = tracing::field::Empty);
    // Encryption, login and welcome run boxed and are freed when done: for
    // the rest of its life, usually idle, the client's task holds only what
    // `Admitted` keeps (see `serve_queries`). The span is entered only to
    // log, not at every poll of the hot path.
    let login = admit(&pooler, stream, peer, span.clone()).instrument(span);
    let Some(mut client) = Box::pin(login).await else {
        return;
    };
    let result = serve_queries(&mut client, &pooler).await;
    async {
        if pooler.config().log_disconnections {
            tracing::info!(event = "disconnect", "disconnect");
        }
        if let Err(e) = result {
            fail(&pooler, &mut client.conn, &e).await;
        }
    }
    .instrument(client.span.clone())
    .await
}

/// Counts a failure by SQLSTATE class, logs it and tells the client.
async fn fail(pooler: &Pooler, conn: &mut Conn, e: &Error) {
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
    // Login failures are logged whatever log_pooler_errors says.
    log_failure(e, pooler.config().log_pooler_errors);
    report(conn, e).await;
}

async fn report(conn: &mut Conn, e: &Error) {
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

fn log_failure(e: &Error, logged: bool) {
    match (e.side(), e) {
        (_, Error::ClientGone | Error::ClientIo(_)) => {
            tracing::debug!(error = %e, "client connection ended")
        }
        _ if !logged && !matches!(e, Error::AuthFailed { .. } | Error::ClientTls(_)) => {
            tracing::debug!(sqlstate = e.sqlstate(), error = %e, "error sent to the client")
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

/// A logged-in client of a pool, welcomed and listed: what it keeps while
/// it is served.
struct Admitted {
    conn: Conn,
    /// Its log lines' span (client address, user, database).
    span: tracing::Span,
    admission: Admission,
}

/// What [`log_in`] hands on besides the connection. Counted in its pool and
/// in `max_client_conn` until dropped.
struct Admission {
    session: Session,
    pool: Arc<Pool>,
    cancel: crate::cancel::CancelGuard,
    listed: Listed<ClientEntry>,
    pooler: Arc<Pooler>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.pool.clients.fetch_sub(1, Ordering::Relaxed);
        self.pooler.clients.fetch_sub(1, Ordering::Relaxed);
        let entry = &self.listed.entry;
        self.pooler.uncount_client(&entry.database, &entry.user);
    }
}

/// Takes a client out of its database's and user's client counts if it
/// ends before it is admitted (`Admission` does it after).
struct CountedFor<'a>(&'a Pooler, &'a str, &'a str);

impl Drop for CountedFor<'_> {
    fn drop(&mut self) {
        self.0.uncount_client(self.1, self.2);
    }
}

/// Decrements the client count when a counted client ends before it is
/// admitted.
struct Counted<'a>(&'a Pooler);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Encryption, the startup packet, authentication and the welcome. `None`
/// when the connection is done with: a cancel request, an admin console
/// session, or a failure (already reported to the client).
async fn admit(
    pooler: &Arc<Pooler>,
    stream: Stream,
    peer: String,
    span: tracing::Span,
) -> Option<Admitted> {
    let login_deadline = tokio::time::Instant::now() + pooler.config().client_login_timeout;
    let acceptor = pooler.acceptor();
    let negotiated = tokio::time::timeout_at(
        login_deadline,
        crate::tls::accept::negotiate(stream, acceptor.as_deref()),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Error::ClientTls(
            "timed out before the handshake ended (client_login_timeout)".into(),
        ))
    });
    let (mut conn, tls) = match negotiated {
        Ok(negotiated) => negotiated,
        Err(e) => {
            log_failure(&e, true);
            return None;
        }
    };
    let encryption = Encryption {
        acceptor: acceptor.as_deref(),
        tls: tls.as_ref(),
    };
    match log_in(pooler, &mut conn, &peer, encryption, login_deadline).await {
        Ok(Some(admission)) => {
            let mut client = Admitted {
                conn,
                span,
                admission,
            };
            match client.conn.flush().await {
                Ok(()) => Some(client),
                Err(e) => {
                    log_failure(&Error::ClientIo(e), true);
                    None
                }
            }
        }
        Ok(None) => None,
        Err(e) => {
            fail(pooler, &mut conn, &e).await;
            None
        }
    }
}

async fn log_in(
    pooler: &Arc<Pooler>,
    conn: &mut Conn,
    peer: &str,
    encryption: Encryption<'_>,
    login_deadline: tokio::time::Instant,
) -> Result<Option<Admission>> {
    let config = &pooler.config();
    let packet =
        tokio::time::timeout_at(login_deadline, read_startup(conn, encryption.tls.is_some()))
            .await
            .map_err(|_| Error::LoginTimeout)??;
    let mut startup = match packet {
        StartupPacket::Cancel {
            process_id,
            secret_key,
        } => {
            pooler
                .cancels
                .cancel(&pooler.registry, process_id, secret_key, config)
                .await;
            return Ok(None);
        }
        StartupPacket::Startup { minor, params } => parse_startup(minor, params, config)?,
        StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
            return Err(Error::ClientProtocol(
                "unexpected second encryption request".into(),
            ))
        }
    };
    if config.application_name_add_host {
        add_host(&mut startup.params, peer);
    }
    let span = tracing::Span::current();
    span.record("user", startup.user.as_str());
    span.record("database", startup.database.as_str());
    encryption.check(conn, &startup.user)?;
    let how = Login {
        deadline: login_deadline,
        channel_binding: encryption.channel_binding(),
        tls: encryption.tls.is_some(),
        cert_cn: encryption.cert_cn(),
    };

    if crate::admin::DATABASES.contains(&startup.database.as_str()) {
        return console(pooler, conn, &startup, peer, how)
            .await
            .map(|()| None);
    }
    if pooler.clients.fetch_add(1, Ordering::Relaxed) >= config.max_client_conn {
        pooler.clients.fetch_sub(1, Ordering::Relaxed);
        pooler
            .stats
            .max_client_conn_refusals
            .fetch_add(1, Ordering::Relaxed);
        return Err(Error::TooManyClients);
    }
    let counted = Counted(pooler);

    let db = config
        .database(&startup.database)
        .ok_or_else(|| Error::NoSuchDatabase(startup.database.clone()))?;
    if pooler.is_disabled(&db.name) {
        return Err(Error::DatabaseDisabled(db.name.clone()));
    }
    let proof = login(pooler, conn, &startup, peer, how, Some(&db)).await?;
    pooler.count_client(&db, &startup.user)?;
    let counted_for = CountedFor(pooler, &db.name, &startup.user);
    let pool = pooler.pool(&db, &startup.user, &proof);
    let session = welcome(conn, config, &pool, &startup).await?;
    pool.stats.logins.fetch_add(1, Ordering::Relaxed);
    pool.clients.fetch_add(1, Ordering::Relaxed);
    // From here on `Admission` keeps the counts.
    std::mem::forget(counted);
    let cancel = pooler.cancels.register(config.peer_id);
    write::backend_key_data(
        &mut conn.wbuf,
        cancel.slot.process_id,
        cancel.slot.secret_key,
    );
    write::ready_for_query(&mut conn.wbuf, TransactionStatus::Idle);
    let listed = pooler.registry.add_client(
        NewClient {
            user: &startup.user,
            database: &startup.database,
            peer,
            application_name: session.param("application_name").unwrap_or_default(),
            tls: conn.stream.tls_description(),
            process_id: cancel.slot.process_id,
        },
        &pooler.shutdown,
    );
    let admission = Admission {
        session,
        pool,
        cancel,
        listed,
        pooler: pooler.clone(),
    };
    std::mem::forget(counted_for);
    if config.log_connections {
        tracing::info!(event = "login", "login");
    }
    Ok(Some(admission))
}

/// `application_name_add_host`: "<application_name or app> - <address>",
/// as PgBouncer names a client's session.
fn add_host(params: &mut Vec<(String, String)>, peer: &str) {
    match params.iter_mut().find(|(k, _)| k == "application_name") {
        Some((_, name)) => *name = format!("{name} - {peer}"),
        None => params.push(("application_name".into(), format!("app - {peer}"))),
    }
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
    // Kept for the client's whole life: no spare capacity, and the
    // parameter list shared with the pool's other clients that have the same.
    Arc::make_mut(&mut session.params).shrink_to_fit();
    session.params = pool.shared_params(session.params);
    session.startup.shrink_to_fit();
    for (name, value) in server.iter() {
        let value = session.param(name).unwrap_or(value);
        write::parameter_status(&mut conn.wbuf, name, value);
    }
    for (name, value) in session.params.iter() {
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

#[cfg(test)]
mod tests {
    fn future_size<A, B, C, F: std::future::Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle client's task holds this future: login and the bound
    /// stretch run boxed so that it stays small (10,000 idle clients in
    /// under 4 KiB each, measured by benches/load.sh's `idle` scenario).
    #[test]
    fn an_idle_client_task_is_small() {
        let size = future_size(super::serve);
        assert!(size <= 1100, "client task future grew to {size} bytes");
    }
}
