//! The admin console: the virtual databases `pgbouncer` and `pgdyno`,
//! simple query protocol only, PgBouncer's commands and column layouts (so
//! `pgbouncer_exporter` and people's habits keep working).
//!
//! `admin_users` may run everything; `stats_users` only `SHOW`.

mod config;
mod rows;
mod show;

use std::sync::Arc;

use bytes::BytesMut;

use crate::error::{Error, Result};
use crate::pooler::Pooler;
use crate::protocol::write::{self, Severity};
use crate::protocol::{fields, TransactionStatus};
use crate::stream::Conn;

/// The database names that reach the console.
pub const DATABASES: &[&str] = &["pgbouncer", "pgdyno"];

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Stats,
}

/// The role of `user` on the console, if any.
pub fn role(pooler: &Pooler, user: &str) -> Option<Role> {
    let c = &pooler.config();
    if c.admin_users.iter().any(|u| u == user) {
        Some(Role::Admin)
    } else if c.stats_users.iter().any(|u| u == user) {
        Some(Role::Stats)
    } else {
        None
    }
}

/// Answers console commands until the client leaves.
pub async fn serve(conn: &mut Conn, pooler: &Arc<Pooler>, role: Role) -> Result<()> {
    loop {
        let message = tokio::select! {
            m = conn.read_message(64 * 1024) => m,
            // An idle console session must not hold up a shutdown.
            _ = pooler.shutdown.begun.cancelled() => return Err(Error::ShuttingDown),
        };
        let msg = match message {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::ClientProtocol(e.to_string()))
            }
            Err(e) => return Err(Error::ClientIo(e)),
        };
        match msg.tag {
            b'X' => return Ok(()),
            b'Q' => {
                let text = fields::cstr(&msg.body)
                    .map(|(q, _)| String::from_utf8_lossy(q).into_owned())
                    .unwrap_or_default();
                let mut out = BytesMut::new();
                match run(&text, pooler, role, &mut out).await {
                    Ok(()) => {}
                    Err(message) => {
                        out.clear();
                        write::error_response(&mut out, Severity::Error, "08P01", &message);
                    }
                }
                write::ready_for_query(&mut out, TransactionStatus::Idle);
                conn.wbuf.extend_from_slice(&out);
                conn.flush().await.map_err(Error::ClientIo)?;
            }
            _ => {
                return Err(Error::ClientProtocol(
                    "the admin console speaks only the simple query protocol".into(),
                ))
            }
        }
    }
}

/// Runs one command (several separated by `;` run in turn).
async fn run(
    text: &str,
    pooler: &Arc<Pooler>,
    role: Role,
    out: &mut BytesMut,
) -> Result<(), String> {
    let commands: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if commands.is_empty() {
        write::command_complete(out, "");
        return Ok(());
    }
    for command in commands {
        let words: Vec<String> = command
            .split_whitespace()
            .map(|w| w.to_ascii_lowercase())
            .collect();
        let word = |i: usize| words.get(i).map(String::as_str);
        let arg = command.split_whitespace().nth(1);
        match (word(0), word(1)) {
            (Some("show"), Some(what)) => show::show(what, pooler, out)?,
            (Some("show"), None) => return Err("SHOW what? (SHOW HELP lists them)".into()),
            _ if role != Role::Admin => {
                return Err(format!(
                    "admin access needed for \"{command}\" (stats_users may only SHOW)"
                ))
            }
            (Some("pause"), _) => {
                for pool in pools_of(pooler, arg)? {
                    pool.pause().await;
                }
                write::command_complete(out, "PAUSE");
            }
            (Some("resume"), _) => {
                for pool in pools_of(pooler, arg)? {
                    pool.resume();
                }
                write::command_complete(out, "RESUME");
            }
            (Some("reconnect"), _) => {
                for pool in pools_of(pooler, arg)? {
                    pool.reconnect();
                }
                write::command_complete(out, "RECONNECT");
            }
            (Some("wait_close"), _) => {
                let pools = pools_of(pooler, arg)?;
                let stale = || pools.iter().any(|p| p.has_stale_backends());
                loop {
                    // Made before the check: a close in between still wakes it.
                    let gone = pooler.registry.server_gone.notified();
                    if !stale() {
                        break;
                    }
                    tokio::select! {
                        _ = gone => {}
                        _ = pooler.shutdown.begun.cancelled() => {
                            return Err("pgdyno is shutting down".into())
                        }
                    }
                }
                write::command_complete(out, "WAIT_CLOSE");
            }
            (Some(command @ ("disable" | "enable")), _) => {
                let db =
                    arg.ok_or_else(|| format!("{} needs a database name", command.to_uppercase()))?;
                pools_of(pooler, Some(db))?;
                pooler.set_disabled(db, command == "disable");
                write::command_complete(out, &command.to_uppercase());
            }
            (Some("kill_client"), _) => {
                let id: u64 = arg
                    .and_then(|a| a.parse().ok())
                    .ok_or("KILL_CLIENT needs a client id (SHOW CLIENTS' id column)")?;
                let client = pooler
                    .registry
                    .clients
                    .get(&id)
                    .map(|c| c.clone())
                    .ok_or_else(|| format!("no client with id {id}"))?;
                client.kill();
                write::command_complete(out, "KILL_CLIENT");
            }
            (Some("kill"), _) => {
                let pools = pools_of(pooler, arg)?;
                for entry in pooler.registry.clients.iter() {
                    if arg.is_none_or(|db| entry.database == db) {
                        entry.kill();
                    }
                }
                for pool in pools {
                    pool.close_idle();
                }
                write::command_complete(out, "KILL");
            }
            (Some("set"), _) => {
                let (key, value) = parse_set(command)?;
                let key = crate::config::canonical(&key);
                if crate::config::SETTINGS.iter().all(|s| s.name != key) {
                    return Err(format!("unknown setting {key} (SHOW CONFIG lists them)"));
                }
                pooler
                    .set(key, &value)
                    .map_err(|e| format!("SET refused, the old value stays: {e}"))?;
                write::command_complete(out, "SET");
            }
            (Some("reload"), _) => {
                pooler
                    .reload()
                    .map_err(|e| format!("RELOAD refused, the old configuration stays: {e}"))?;
                write::command_complete(out, "RELOAD");
            }
            (Some("shutdown"), how) => {
                let timeout = pooler.config().shutdown_timeout;
                match how {
                    // PgBouncer's bare SHUTDOWN exits at once; here it
                    // lets transactions end (SIGQUIT exits at once).
                    None | Some("wait_for_servers") => pooler.shutdown.begin(timeout),
                    Some("wait_for_clients") => pooler.shutdown.wait_for_clients(timeout),
                    Some(_) => {
                        return Err(
                            "use SHUTDOWN, SHUTDOWN WAIT_FOR_SERVERS or SHUTDOWN WAIT_FOR_CLIENTS"
                                .into(),
                        )
                    }
                }
                tracing::info!(command, "shutdown from the admin console");
                write::command_complete(out, "SHUTDOWN");
            }
            _ => {
                return Err(format!(
                    "invalid command \"{command}\" (SHOW HELP lists the commands)"
                ))
            }
        }
    }
    Ok(())
}

/// `SET key = value` (or `TO`), the value bare or in single quotes.
fn parse_set(command: &str) -> Result<(String, String), String> {
    let usage = || "use SET key = value".to_owned();
    let rest = command.trim()[3..].trim();
    let (key, value) = match rest.split_once('=') {
        Some(kv) => kv,
        None => {
            let at = rest.to_ascii_lowercase().find(" to ").ok_or_else(usage)?;
            (&rest[..at], &rest[at + 4..])
        }
    };
    let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(usage());
    }
    let value = match value.strip_prefix('\'') {
        Some(quoted) => quoted
            .strip_suffix('\'')
            .ok_or_else(|| "unterminated quoted value".to_owned())?
            .replace("''", "'"),
        None => value.to_owned(),
    };
    Ok((key, value))
}

/// The pools of one database, or all of them; an unknown name is an error.
fn pools_of(
    pooler: &Pooler,
    database: Option<&str>,
) -> Result<Vec<Arc<crate::pool::Pool>>, String> {
    if let Some(db) = database {
        if pooler.config().database(db).is_none() {
            return Err(format!("no such database: {db}"));
        }
    }
    Ok(pooler
        .pools()
        .into_iter()
        .filter(|p| database.is_none_or(|db| p.database == db))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::parse_set;

    #[test]
    fn set_takes_equals_or_to_and_quoted_values() {
        let ok = |c: &str, k: &str, v: &str| {
            assert_eq!(parse_set(c), Ok((k.to_owned(), v.to_owned())), "{c}");
        };
        ok("SET default_pool_size = 30", "default_pool_size", "30");
        ok("set Query_Timeout=2.5", "query_timeout", "2.5");
        ok(
            "SET server_reset_query TO 'DISCARD ALL'",
            "server_reset_query",
            "DISCARD ALL",
        );
        ok(
            "SET server_check_query = 'select ''x'''",
            "server_check_query",
            "select 'x'",
        );
        ok("SET server_check_query = ''", "server_check_query", "");
        for bad in ["SET", "SET x", "SET = 3", "SET a b = 3", "SET x = 'open"] {
            assert!(parse_set(bad).is_err(), "{bad}");
        }
    }
}
