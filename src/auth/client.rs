//! The authentication exchange with a client, after its StartupMessage and
//! before AuthenticationOk.
//!
//! An unknown user goes through the same exchange as a known one, against
//! a decoy secret, and fails with the same message: no user enumeration.

use bytes::Buf;

use super::scram::{
    Binding, ScramError, ScramKeys, ScramSecret, ServerExchange, MECHANISM, MECHANISM_PLUS,
};
use super::{md5_response, Secret};
use crate::config::AuthType;
use crate::error::{Error, Result};
use crate::protocol::{fields, write};
use crate::stream::Conn;

/// Password messages are small; anything bigger is an attack or a bug.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// What a successful login proved, usable to log in to PostgreSQL.
#[derive(Debug, Default)]
pub struct Proof {
    /// The password itself, when the client sent it in clear.
    pub cleartext: Option<String>,
    /// The ClientKey a SCRAM login proved, with the secret it matched.
    pub scram: Option<ScramKeys>,
    /// The secret `auth_query` found, which the client was checked against.
    pub looked_up: Option<std::sync::Arc<Secret>>,
}

/// Runs the exchange `auth_type` asks for. `secret` is `None` for a user
/// pgdyno does not know. `channel_binding`: over TLS, our certificate's
/// tls-server-end-point data, and SCRAM-SHA-256-PLUS is offered.
pub async fn authenticate(
    conn: &mut Conn,
    auth_type: AuthType,
    user: &str,
    secret: Option<&Secret>,
    channel_binding: Option<&[u8]>,
    scram_iterations: u32,
) -> Result<Proof> {
    exchange(
        conn,
        auth_type,
        user,
        secret,
        channel_binding,
        scram_iterations,
    )
    .await
    .map_err(|e| match e {
        Error::AuthFailed { .. } => Error::AuthFailed {
            user: user.to_owned(),
        },
        other => other,
    })
}

async fn exchange(
    conn: &mut Conn,
    auth_type: AuthType,
    user: &str,
    secret: Option<&Secret>,
    cb: Option<&[u8]>,
    iterations: u32,
) -> Result<Proof> {
    match auth_type {
        // Cert: the TLS handshake checked the certificate and its CN
        // (client_tls_sslmode = verify-full; `login` asks that there was one).
        AuthType::Trust | AuthType::Cert => Ok(Proof::default()),
        // `login` replaces it by the method its records give; never let
        // anyone in on it.
        AuthType::Hba => Err(Error::AuthUnsupported(
            "no login method chosen for this connection".into(),
        )),
        AuthType::Plain => {
            let password = cleartext(conn).await?;
            match secret {
                Some(s) if s.verify_password(user, &password) => Ok(Proof {
                    cleartext: Some(password),
                    ..Proof::default()
                }),
                _ => Err(Error::AuthFailed {
                    user: String::new(),
                }),
            }
        }
        AuthType::Md5 => match secret {
            Some(Secret::Scram(s)) => scram(conn, s, cb).await,
            Some(s) => md5(conn, s.md5(user).as_deref()).await,
            None => md5(conn, None).await,
        },
        AuthType::ScramSha256 => match secret.map(|s| s.scram(iterations)) {
            Some(Some(s)) => scram(conn, s, cb).await,
            // md5-hashed secrets cannot serve SCRAM (PostgreSQL agrees).
            Some(None) => {
                tracing::warn!(
                    user,
                    "auth_type scram-sha-256 cannot use this user's md5 secret"
                );
                scram(conn, &ScramSecret::decoy(user, iterations), cb).await
            }
            None => scram(conn, &ScramSecret::decoy(user, iterations), cb).await,
        },
    }
}

/// Reads the client's next message, which must be a PasswordMessage ('p').
async fn password_message(conn: &mut Conn) -> Result<bytes::BytesMut> {
    conn.flush().await.map_err(Error::ClientIo)?;
    let msg = conn
        .read_message(MAX_AUTH_MESSAGE)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::ClientGone,
            std::io::ErrorKind::InvalidData => Error::ClientProtocol(e.to_string()),
            _ => Error::ClientIo(e),
        })?;
    if msg.tag != b'p' {
        return Err(Error::ClientProtocol(format!(
            "expected password response, got message type {:?}",
            msg.tag as char
        )));
    }
    Ok(msg.body)
}

async fn cleartext(conn: &mut Conn) -> Result<String> {
    write::authentication_cleartext(&mut conn.wbuf);
    let body = password_message(conn).await?;
    let (password, _) = fields::cstr(&body)
        .ok_or_else(|| Error::ClientProtocol("invalid password packet".into()))?;
    String::from_utf8(password.to_vec())
        .map_err(|_| Error::ClientProtocol("password is not UTF-8".into()))
}

async fn md5(conn: &mut Conn, secret: Option<&str>) -> Result<Proof> {
    let salt: [u8; 4] = rand::random();
    write::authentication_md5(&mut conn.wbuf, salt);
    let body = password_message(conn).await?;
    let (response, _) = fields::cstr(&body)
        .ok_or_else(|| Error::ClientProtocol("invalid password packet".into()))?;
    match secret {
        Some(secret)
            if super::constant_time_eq(response, md5_response(secret, salt).as_bytes()) =>
        {
            Ok(Proof::default())
        }
        _ => Err(Error::AuthFailed {
            user: String::new(),
        }),
    }
}

async fn scram(conn: &mut Conn, secret: &ScramSecret, cb: Option<&[u8]>) -> Result<Proof> {
    let malformed = |what: &str| Error::ClientProtocol(format!("malformed SCRAM message: {what}"));
    let offered: &[&str] = match cb {
        Some(_) => &[MECHANISM_PLUS, MECHANISM],
        None => &[MECHANISM],
    };
    write::authentication_sasl(&mut conn.wbuf, offered);
    let mut body = password_message(conn).await?;
    // SASLInitialResponse: mechanism, Int32 length, client-first-message.
    let (mechanism, rest) = fields::cstr(&body).ok_or_else(|| malformed("no mechanism"))?;
    let binding = match (mechanism, cb) {
        (m, Some(data)) if m == MECHANISM_PLUS.as_bytes() => Binding::Chosen(data),
        (m, Some(_)) if m == MECHANISM.as_bytes() => Binding::NotChosen,
        (m, None) if m == MECHANISM.as_bytes() => Binding::Unsupported,
        _ => {
            return Err(Error::ClientProtocol(
                "client selected an invalid SASL authentication mechanism".into(),
            ))
        }
    };
    let skip = mechanism.len() + 1;
    if rest.len() < 4 {
        return Err(malformed("truncated initial response"));
    }
    body.advance(skip);
    let len = body.get_i32();
    if len < 0 || len as usize != body.len() {
        return Err(malformed("bad initial response length"));
    }
    let scram_err = |e: ScramError| match e {
        ScramError::Malformed(what) => malformed(what),
        ScramError::WrongProof => Error::AuthFailed {
            user: String::new(),
        },
    };
    let (exchange, server_first) =
        ServerExchange::start(&body, secret, binding).map_err(scram_err)?;
    write::authentication_sasl_continue(&mut conn.wbuf, server_first.as_bytes());
    let body = password_message(conn).await?;
    let (server_final, client_key) = exchange.finish(&body, secret).map_err(scram_err)?;
    write::authentication_sasl_final(&mut conn.wbuf, server_final.as_bytes());
    Ok(Proof {
        scram: Some(ScramKeys {
            client_key,
            secret: secret.clone(),
        }),
        ..Proof::default()
    })
}
