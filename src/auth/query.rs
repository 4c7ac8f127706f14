//! `auth_query`: a user the auth file does not list is looked up in
//! PostgreSQL, as PgBouncer does. The query runs as `auth_user` on a
//! backend of that user's pool (on `auth_dbname`, or the database the
//! client asked for), with the client's user name as `$1`; its second
//! column is the secret (md5 or SCRAM, as `pg_authid` keeps it), NULL or
//! no row meaning no such user.

use std::sync::Arc;

use bytes::{Buf, BufMut};
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;

use super::client::Proof;
use super::Secret;
use crate::backend::Backend;
use crate::config::DatabaseConfig;
use crate::error::{Error, Result};
use crate::pooler::Pooler;

/// The largest reply message the lookup reads (a secret is ~130 bytes).
const MAX_REPLY: usize = 64 * 1024;

/// The secret of `user`, from `auth_query`; `None` when `auth_user` is not
/// set or PostgreSQL knows no such user (or it has no password).
pub async fn look_up(
    pooler: &Pooler,
    db: &DatabaseConfig,
    user: &str,
) -> Result<Option<Arc<Secret>>> {
    let config = pooler.config();
    if config.auth_user.is_empty() {
        return Ok(None);
    }
    let named;
    let db = match config.auth_dbname.as_str() {
        "" => db,
        name => {
            named = config.database(name).ok_or_else(|| {
                Error::AuthUnsupported(format!(
                    "auth_dbname \"{name}\" is not a configured database"
                ))
            })?;
            &*named
        }
    };
    let pool = pooler.pool(db, &config.auth_user, &Proof::default());
    let mut backend = pool.lend().await?;
    let found = fetch(&mut backend, &config.auth_query, user).await;
    pool.release(backend, found.is_ok());
    match found {
        Ok(secret) => Ok(secret
            .filter(|s| !s.is_empty())
            .map(|s| Arc::new(Secret::parse(&s)))),
        Err(e) => {
            tracing::warn!(event = "auth_query_failed", error = %e, "auth_query failed");
            Err(Error::AuthUnsupported(
                "could not look up the user's password (auth_query failed)".into(),
            ))
        }
    }
}

/// Runs `query` with `$1` = `user` (extended protocol, unnamed statement)
/// and returns the first row's second column.
async fn fetch(backend: &mut Backend, query: &str, user: &str) -> Result<Option<String>> {
    let protocol = |e: std::io::Error| Error::BackendProtocol(e.to_string());
    let buf = &mut backend.conn.wbuf;
    frontend::parse("", query, [], buf).map_err(protocol)?;
    frontend::bind(
        "",
        "",
        [0],
        [user],
        |value, buf| {
            buf.put_slice(value.as_bytes());
            Ok(IsNull::No)
        },
        [0],
        buf,
    )
    .map_err(|_| Error::BackendProtocol("auth_query: cannot encode the user name".into()))?;
    frontend::execute("", 1, buf).map_err(protocol)?;
    frontend::sync(buf);
    backend.conn.flush().await.map_err(crate::backend::io_err)?;
    let (mut secret, mut failure) = (None, None);
    loop {
        let msg = backend
            .conn
            .read_message(MAX_REPLY)
            .await
            .map_err(crate::backend::io_err)?;
        match msg.tag {
            b'D' if secret.is_none() => match second_column(&msg.body) {
                Some(value) => secret = Some(value),
                None => {
                    failure = Some(Error::BackendProtocol(
                        "auth_query must return two columns: user name and secret".into(),
                    ))
                }
            },
            b'E' => failure = Some(crate::backend::rejected(&msg.body, "auth_query failed")),
            b'Z' => {
                return match failure {
                    Some(e) => Err(e),
                    None => Ok(secret.flatten()),
                }
            }
            _ => {}
        }
    }
}

/// A DataRow's second column: `Some(None)` for NULL, `None` if the row has
/// fewer than two columns or is malformed.
fn second_column(mut body: &[u8]) -> Option<Option<String>> {
    if body.len() < 2 || body.get_i16() < 2 {
        return None;
    }
    let mut value = None;
    for _ in 0..2 {
        if body.len() < 4 {
            return None;
        }
        let len = body.get_i32();
        value = if len < 0 {
            Some(None)
        } else {
            let bytes = body.get(..len as usize)?;
            body.advance(len as usize);
            Some(Some(String::from_utf8_lossy(bytes).into_owned()))
        };
    }
    value
}

#[cfg(test)]
mod tests {
    use super::second_column;

    fn row(columns: &[Option<&str>]) -> Vec<u8> {
        let mut b = (columns.len() as i16).to_be_bytes().to_vec();
        for c in columns {
            match c {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn the_secret_is_the_second_column() {
        let secret = Some("md5abc".to_owned());
        assert_eq!(
            second_column(&row(&[Some("u"), Some("md5abc")])),
            Some(secret)
        );
        assert_eq!(second_column(&row(&[Some("u"), None])), Some(None));
        assert_eq!(second_column(&row(&[Some("u")])), None);
        // Truncated: the length says more than there is.
        let mut cut = row(&[Some("u"), Some("md5abc")]);
        cut.truncate(cut.len() - 2);
        assert_eq!(second_column(&cut), None);
        assert_eq!(second_column(&[0]), None);
    }
}
