//! Logging in to PostgreSQL: the startup message, the authentication
//! exchange (SCRAM with or without channel binding, md5, cleartext), and
//! what the server reports before its first ReadyForQuery.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use postgres_protocol::message::frontend;

use super::{
    io_err, set_param, Backend, Credential, Endpoint, Live, Target, MAX_LOGIN_MESSAGE, NEXT_ID,
};
use crate::auth;
use crate::auth::scram::{ClientBinding, KeyExchange, KeyProof, MECHANISM, MECHANISM_PLUS};
use crate::clock;
use crate::config::tls::ChannelBinding as BindingMode;
use crate::error::{Error, Result};
use crate::prepared::BackendStatements;
use crate::protocol::fields;
use crate::relay::Translation;
use crate::stream::Conn;

pub(super) async fn login(
    mut conn: Conn,
    target: Arc<Target>,
    at: &Endpoint,
    binding: Option<Vec<u8>>,
) -> Result<Backend> {
    let mut params: Vec<(&str, &str)> = vec![("user", &target.user), ("database", &at.dbname)];
    for key in ["options", "application_name"] {
        if let Some(v) = at.upstream.param(key) {
            params.push((key, v));
        }
    }
    frontend::startup_message(params, &mut conn.wbuf).map_err(Error::BackendIo)?;
    conn.flush().await.map_err(io_err)?;
    let mut scram: Option<KeyExchange> = None;
    let mut backend = Backend(Box::new(Live {
        conn,
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        params: Vec::new(),
        synced: None,
        statements: BackendStatements::default(),
        process_id: 0,
        secret_key: 0,
        cancel_gate: Arc::default(),
        created: clock::now(),
        last_used: clock::now(),
        target: target.clone(),
        listed: None,
        stretch: Translation::new(clock::now()),
    }));
    loop {
        let msg = backend
            .conn
            .read_message(MAX_LOGIN_MESSAGE)
            .await
            .map_err(io_err)?;
        let mut body = msg.body;
        match msg.tag {
            b'R' => {
                if body.len() < 4 {
                    return Err(Error::BackendProtocol(
                        "short authentication request".into(),
                    ));
                }
                let code = body.get_i32();
                authenticate(
                    &mut backend.conn,
                    &target,
                    &at.credential,
                    code,
                    &body,
                    &mut scram,
                    &binding,
                )
                .await?;
            }
            b'S' => {
                if let Some((k, v)) = fields::parameter_status(&body) {
                    set_param(&mut backend.params, k, v);
                }
            }
            b'K' if body.len() == 8 => {
                backend.process_id = body.get_i32();
                backend.secret_key = body.get_i32();
            }
            b'Z' => return Ok(backend),
            b'E' => {
                return Err(Error::BackendRejected {
                    code: fields::error_field(&body, b'C')
                        .unwrap_or("08006")
                        .to_owned(),
                    message: fields::error_field(&body, b'M')
                        .unwrap_or("login failed")
                        .to_owned(),
                })
            }
            // NoticeResponse, NegotiateProtocolVersion: nothing to do.
            _ => {}
        }
    }
}

async fn authenticate(
    conn: &mut Conn,
    target: &Target,
    credential: &Credential,
    code: i32,
    body: &BytesMut,
    scram: &mut Option<KeyExchange>,
    tls_binding: &Option<Vec<u8>>,
) -> Result<()> {
    let no_password = || {
        Error::BackendConnect(format!(
            "server asked for a password for user \"{}\" and pgdyno has none usable for this method",
            target.user
        ))
    };
    let password = match credential {
        Credential::Password(p) => Some(p.as_str()),
        _ => None,
    };
    match code {
        // Without SCRAM no binding was made (with SCRAM, choose_binding
        // has already insisted on it).
        0 if scram.is_none() && target.connector().channel_binding == BindingMode::Require => {
            return Err(Error::BackendConnect(
                "channel_binding=require, but the server logged pgdyno in without SCRAM".into(),
            ))
        }
        0 => return Ok(()),
        3 => {
            let p = password.ok_or_else(no_password)?;
            frontend::password_message(p.as_bytes(), &mut conn.wbuf).map_err(Error::BackendIo)?;
        }
        5 => {
            let salt: [u8; 4] = body
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| Error::BackendProtocol("short md5 request".into()))?;
            let secret = match credential {
                Credential::Password(p) => auth::md5_secret(p, &target.user),
                Credential::Md5(m) => m.clone(),
                Credential::None | Credential::ScramKeys(_) => return Err(no_password()),
            };
            let response = auth::md5_response(&secret, salt);
            frontend::password_message(response.as_bytes(), &mut conn.wbuf)
                .map_err(Error::BackendIo)?;
        }
        10 => {
            let binding = choose_binding(body, tls_binding, target.connector().channel_binding)?;
            let mechanism = match binding {
                ClientBinding::EndPoint(_) => MECHANISM_PLUS,
                _ => MECHANISM,
            };
            let proof = match credential {
                Credential::Password(password) => KeyProof::Password {
                    password: password.clone(),
                    cache: target.scram_cache.clone(),
                },
                Credential::ScramKeys(keys) => KeyProof::Keys(keys.clone()),
                _ => return Err(no_password()),
            };
            let (exchange, first) = KeyExchange::start(proof, binding);
            frontend::sasl_initial_response(mechanism, first.as_bytes(), &mut conn.wbuf)
                .map_err(Error::BackendIo)?;
            *scram = Some(exchange);
        }
        11 => {
            let exchange = scram
                .as_mut()
                .ok_or_else(|| Error::BackendProtocol("unexpected SASL continue".into()))?;
            let message = exchange
                .update(body)
                .map_err(|e| Error::BackendConnect(format!("SCRAM: {e:?}")))?;
            frontend::sasl_response(message.as_bytes(), &mut conn.wbuf)
                .map_err(Error::BackendIo)?;
        }
        12 => {
            let exchange = scram
                .as_mut()
                .ok_or_else(|| Error::BackendProtocol("unexpected SASL final".into()))?;
            if exchange.finish(body).is_err() {
                return Err(Error::BackendProtocol(
                    "invalid SCRAM server signature".into(),
                ));
            }
            return Ok(());
        }
        other => {
            return Err(Error::BackendConnect(format!(
                "server asked for an authentication method pgdyno does not support ({other})"
            )))
        }
    }
    conn.flush().await.map_err(io_err)
}

/// Picks channel binding for a SCRAM login, as libpq does: bind when the
/// connection is TLS and the server offers SCRAM-SHA-256-PLUS, unless
/// `channel_binding=disable`; `require` refuses to log in without it.
fn choose_binding(
    offered: &[u8],
    tls_binding: &Option<Vec<u8>>,
    mode: BindingMode,
) -> Result<ClientBinding> {
    let offers = |m: &str| offered.split(|&b| b == 0).any(|o| o == m.as_bytes());
    let binding = match (mode, tls_binding) {
        (BindingMode::Disable, _) => ClientBinding::None,
        (_, Some(data)) if offers(MECHANISM_PLUS) => ClientBinding::EndPoint(data.clone()),
        (BindingMode::Require, _) => {
            return Err(Error::BackendConnect(
                "channel_binding=require, but the server did not offer SCRAM-SHA-256-PLUS \
                 over a TLS connection"
                    .into(),
            ))
        }
        (BindingMode::Prefer, Some(_)) => ClientBinding::Unused,
        (BindingMode::Prefer, None) => ClientBinding::None,
    };
    if !matches!(binding, ClientBinding::EndPoint(_)) && !offers(MECHANISM) {
        return Err(Error::BackendConnect(
            "server offers no SASL mechanism pgdyno supports".into(),
        ));
    }
    Ok(binding)
}
