//! A client's login: the startup packet and its parameters, what
//! client_tls_sslmode asks of the connection, and the authentication
//! exchange (with its failure throttle), for pool clients and the admin
//! console alike. What happens after the login is [`super`]'s.

use std::sync::Arc;

use crate::auth::client::authenticate;
use crate::auth::hba::{Method, Origin};
use crate::auth::Users;
use crate::config::tls::SslMode;
use crate::config::{AuthType, Config, DatabaseConfig};
use crate::error::{Error, Result};
use crate::pooler::Pooler;
use crate::protocol::startup::{self, StartupPacket};
use crate::protocol::write;
use crate::protocol::TransactionStatus;
use crate::session;
use crate::stream::{Conn, Stream};
use crate::tls::{Acceptor, ClientTlsInfo};
use std::sync::atomic::Ordering;

/// What a client asked for in its StartupMessage.
#[derive(Debug, Default)]
pub struct Startup {
    pub user: String,
    pub database: String,
    /// Tracked session parameters, from the packet and `options=-c k=v`.
    pub params: Vec<(String, String)>,
    /// `_pq_.` protocol options we do not know (all of them).
    pub unknown_protocol_options: Vec<String>,
    pub minor: u16,
}

/// How a client's connection is encrypted, and what pgdyno asks of it.
#[derive(Clone, Copy)]
pub(super) struct Encryption<'a> {
    pub acceptor: Option<&'a Acceptor>,
    pub tls: Option<&'a ClientTlsInfo>,
}

impl Encryption<'_> {
    /// Refuses what client_tls_sslmode forbids: plaintext over TCP under
    /// require (Unix sockets are exempt, as in PgBouncer), and under
    /// verify-full a certificate whose CN is not the user name.
    pub fn check(&self, conn: &Conn, user: &str) -> Result<()> {
        let Some(acceptor) = self.acceptor else {
            return Ok(());
        };
        match self.tls {
            None if acceptor.mode.requires_tls() && !matches!(conn.stream, Stream::Unix(_)) => {
                Err(Error::TlsRequired)
            }
            Some(tls)
                if acceptor.mode == SslMode::VerifyFull && tls.peer_cn.as_deref() != Some(user) =>
            {
                Err(Error::AuthUnsupported(format!(
                    "certificate authentication failed for user \"{user}\": the certificate's CN is {}",
                    tls.peer_cn.as_deref().map(|cn| format!("\"{cn}\"")).unwrap_or_else(|| "missing".into())
                )))
            }
            _ => Ok(()),
        }
    }

    /// The CN of the certificate the client showed over TLS.
    pub fn cert_cn(&self) -> Option<&str> {
        self.tls.and_then(|t| t.peer_cn.as_deref())
    }

    pub fn channel_binding(&self) -> Option<&[u8]> {
        self.tls.and_then(|t| t.channel_binding.as_deref())
    }
}

/// What the authentication exchange may take: until when, whether the
/// connection is encrypted, the TLS channel binding data it may offer, and
/// the CN of the certificate the client showed (checked by the handshake).
#[derive(Clone, Copy)]
pub(super) struct Login<'a> {
    pub deadline: tokio::time::Instant,
    pub tls: bool,
    pub channel_binding: Option<&'a [u8]>,
    pub cert_cn: Option<&'a str>,
}

/// Authenticates a client, slowing down and then refusing addresses that
/// keep failing.
/// `db`: the database a pool client asked for (`None` on the console),
/// where `auth_query` looks up a user the auth file does not list.
pub(super) async fn login(
    pooler: &Pooler,
    conn: &mut Conn,
    startup: &Startup,
    peer: &str,
    how: Login<'_>,
    db: Option<&DatabaseConfig>,
) -> Result<crate::auth::client::Proof> {
    let user = startup.user.as_str();
    let ip = peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
    if ip.is_some_and(|ip| pooler.throttle.blocked(ip)) {
        pooler
            .stats
            .throttled_logins
            .fetch_add(1, Ordering::Relaxed);
        return Err(Error::AuthUnsupported(
            "too many failed login attempts from this address; try again later".into(),
        ));
    }
    // Read once: the hba records, and the name maps peer and cert use.
    let users = pooler.users();
    let mut map = None;
    let auth_type = match pooler.config().auth_type {
        AuthType::Hba => {
            let local = matches!(conn.stream, Stream::Unix(_));
            let origin = Origin {
                ip: if local { None } else { ip },
                tls: how.tls,
                database: &startup.database,
                user,
            };
            // Refusals in PostgreSQL's words.
            let refused = |why: &str| Err(Error::AuthUnsupported(format!("{why} {origin}")));
            let rule = users.hba.as_ref().and_then(|h| h.rule(&origin));
            map = rule.and_then(|(_, m)| m);
            match rule.map(|(method, _)| method) {
                Some(Method::Auth(method)) => method,
                Some(Method::Peer) => return peer_login(conn, user, may_be(&users, map)),
                Some(Method::Reject) => return refused("pg_hba.conf rejects connection for"),
                None => return refused("no pg_hba.conf entry for"),
            }
        }
        configured => configured,
    };
    if auth_type == AuthType::Cert {
        // Under verify-full the handshake compared the CN already; under
        // hba the sslmode may be verify-ca.
        let may_be = may_be(&users, map);
        match how.cert_cn {
            Some(cn) if may_be(cn, user) => {}
            cn => {
                return Err(Error::AuthUnsupported(format!(
                    "certificate authentication failed for user \"{user}\": {}",
                    cn.map_or(
                        "no client certificate (cert takes TLS with one)".into(),
                        |cn| { format!("the certificate's CN is \"{cn}\"") }
                    )
                )))
            }
        }
    }
    let exchange = async {
        let mut looked_up = None;
        let secret = match (users.get(user), db) {
            (Some(secret), _) => Some(secret),
            (None, Some(db)) if !matches!(auth_type, AuthType::Trust | AuthType::Cert) => {
                looked_up = Box::pin(crate::auth::query::look_up(pooler, db, user)).await?;
                looked_up.clone()
            }
            (None, _) => None,
        };
        let mut proof = authenticate(
            conn,
            auth_type,
            user,
            secret.as_deref(),
            how.channel_binding,
            pooler.config().scram_iterations,
        )
        .await?;
        proof.looked_up = looked_up;
        Ok(proof)
    };
    let result = tokio::time::timeout_at(how.deadline, exchange)
        .await
        .map_err(|_| Error::LoginTimeout)?;
    match (&result, ip) {
        (Err(Error::AuthFailed { .. }), ip) => {
            pooler.stats.login_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(ip) = ip {
                let (delay, blocked) = pooler.throttle.failed(ip);
                if blocked {
                    tracing::warn!(event = "login_blocked", client_addr = %ip, "too many failed logins: refusing this address for a while");
                }
                tokio::time::sleep(delay).await;
            }
        }
        (Ok(_), Some(ip)) => pooler.throttle.succeeded(ip),
        _ => {}
    }
    result
}

/// Whether a client whose system name (operating-system user, or
/// certificate CN) is the first argument may log in as the second: the
/// same name, or as `map` in `auth_ident_file` says.
fn may_be<'a>(users: &'a Users, map: Option<&'a str>) -> impl Fn(&str, &str) -> bool + 'a {
    move |system, user| match map {
        None => system == user,
        Some(map) => users
            .ident
            .as_ref()
            .is_some_and(|i| i.permits(map, system, user)),
    }
}

/// `peer`: the Unix-socket client's operating-system user must be the user
/// it asks to be (or one `map` lets in as that user).
fn peer_login(
    conn: &Conn,
    user: &str,
    may_be: impl Fn(&str, &str) -> bool,
) -> Result<crate::auth::client::Proof> {
    let uid = match &conn.stream {
        Stream::Unix(s) => s.peer_cred().ok().map(|c| c.uid()),
        _ => None,
    };
    match uid.and_then(crate::auth::hba::system_user) {
        Some(name) if may_be(&name, user) => Ok(Default::default()),
        _ => Err(Error::AuthUnsupported(format!(
            "Peer authentication failed for user \"{user}\""
        ))),
    }
}

/// A client of the admin console: exempt from `max_client_conn`, and only
/// for `admin_users` and `stats_users`.
pub(super) async fn console(
    pooler: &Arc<Pooler>,
    conn: &mut Conn,
    startup: &Startup,
    peer: &str,
    how: Login<'_>,
) -> Result<()> {
    login(pooler, conn, startup, peer, how, None).await?;
    let role = crate::admin::role(pooler, &startup.user).ok_or_else(|| {
        Error::AuthUnsupported(format!(
            "user \"{}\" is not in admin_users or stats_users",
            startup.user
        ))
    })?;
    write::authentication_ok(&mut conn.wbuf);
    for (name, value) in [
        ("server_version", "16.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgdyno"),
    ] {
        write::parameter_status(&mut conn.wbuf, name, value);
    }
    write::backend_key_data(&mut conn.wbuf, 0, 0);
    write::ready_for_query(&mut conn.wbuf, TransactionStatus::Idle);
    conn.flush().await.map_err(Error::ClientIo)?;
    tracing::info!(event = "admin_login", ?role, "admin console login");
    crate::admin::serve(conn, pooler, role).await
}

/// Reads the startup packet, answering SSLRequest/GSSENCRequest with 'N'
/// and reading the packet that follows. (With TLS on, an SSLRequest never
/// gets here: [`crate::tls::accept::negotiate`] took it; on an `encrypted`
/// connection another one is an error.)
pub(super) async fn read_startup(conn: &mut Conn, encrypted: bool) -> Result<StartupPacket> {
    let mut encryption_asked = encrypted;
    loop {
        while conn.rbuf.len() < 4 {
            fill(conn).await?;
        }
        let len = startup::packet_len(&conn.rbuf)
            .expect("four bytes are there")
            .map_err(|e| Error::ClientProtocol(e.to_string()))?;
        while conn.rbuf.len() < len {
            fill(conn).await?;
        }
        let packet = conn.rbuf.split_to(len);
        let parsed = startup::parse(&packet).map_err(|e| Error::ClientProtocol(e.to_string()))?;
        match parsed {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if !encryption_asked => {
                encryption_asked = true;
                if !conn.rbuf.is_empty() {
                    return Err(Error::ClientProtocol(
                        "received unencrypted data after SSL request".into(),
                    ));
                }
                conn.wbuf.extend_from_slice(b"N");
                conn.flush().await.map_err(Error::ClientIo)?;
            }
            other => return Ok(other),
        }
    }
}

async fn fill(conn: &mut Conn) -> Result<()> {
    match conn.fill().await {
        Ok(0) => Err(Error::ClientGone),
        Ok(_) => Ok(()),
        Err(e) => Err(Error::ClientIo(e)),
    }
}

/// Sorts the startup parameters: user and database, tracked session
/// parameters (also from `options`), ignored ones, and the rest refused.
pub fn parse_startup(
    minor: u16,
    params: Vec<(String, String)>,
    config: &Config,
) -> Result<Startup> {
    let mut s = Startup {
        minor,
        ..Default::default()
    };
    let ignore = &config.ignore_startup_parameters;
    let track = |s: &mut Startup, key: &str, value: String| -> Result<()> {
        if session::is_tracked(key, &config.track_extra_parameters) {
            let key = session::canonical(key);
            s.params.retain(|(k, _)| *k != key);
            s.params.push((key, value));
            Ok(())
        } else if ignore.iter().any(|i| i.eq_ignore_ascii_case(key)) {
            Ok(())
        } else {
            Err(Error::UnsupportedStartupParameter(key.to_owned()))
        }
    };
    for (key, value) in params {
        match key.as_str() {
            "user" => s.user = value,
            "database" => s.database = value,
            "options" => {
                for (k, v) in parse_options(&value)? {
                    track(&mut s, &k, v)?;
                }
            }
            k if k.starts_with("_pq_.") => s.unknown_protocol_options.push(key),
            _ => track(&mut s, &key, value)?,
        }
    }
    if s.user.is_empty() {
        return Err(Error::AuthUnsupported(
            "no PostgreSQL user name specified in startup packet".into(),
        ));
    }
    if s.database.is_empty() {
        s.database = s.user.clone();
    }
    Ok(s)
}

/// `-c key=value` and `--key=value` settings from the `options` parameter
/// (backslash escapes a space, as in libpq).
fn parse_options(options: &str) -> Result<Vec<(String, String)>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let bad = || Error::UnsupportedStartupParameter(format!("options={options}"));
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next().ok_or_else(bad)?
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_owned()
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_owned()
        } else {
            return Err(bad());
        };
        let (k, v) = setting.split_once('=').ok_or_else(bad)?;
        out.push((k.replace('-', "_"), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn startup_parameters_are_sorted() {
        let config = Config::load(&crate::config::Sources {
            flags: params(&[("upstream", "postgres://u@h/d")]),
            ..Default::default()
        })
        .unwrap();
        let s = parse_startup(
            0,
            params(&[
                ("user", "u"),
                ("extra_float_digits", "3"),
                (
                    "options",
                    "-c TimeZone=UTC --DateStyle=ISO -capplication_name=x\\ y",
                ),
                ("_pq_.foo", "1"),
            ]),
            &config,
        )
        .unwrap();
        assert_eq!(s.database, "u");
        assert_eq!(
            s.params,
            params(&[
                ("TimeZone", "UTC"),
                ("DateStyle", "ISO"),
                ("application_name", "x y")
            ])
        );
        assert_eq!(s.unknown_protocol_options, vec!["_pq_.foo".to_string()]);
        let e =
            parse_startup(0, params(&[("user", "u"), ("search_path", "x")]), &config).unwrap_err();
        assert_eq!(e.to_string(), "unsupported startup parameter: search_path");
        assert!(parse_startup(0, params(&[("database", "d")]), &config).is_err());
        assert!(parse_startup(0, params(&[("user", "u"), ("options", "-x")]), &config).is_err());
    }
}
