//! The admin console (databases `pgbouncer` and `pgdyno`) as PgBouncer's
//! users and tools meet it, and the login throttle in front of it:
//!
//! - `columns`: every SHOW with PgBouncer's columns in PgBouncer's order,
//!   through tokio-postgres and psql;
//! - `views`: SHOW POOLS, CLIENTS and SERVERS agreeing with what is going
//!   on; stats_users limited to SHOW; what the console refuses;
//! - `control`: PAUSE/RESUME under load losing nothing, RECONNECT,
//!   KILL <db>, SHUTDOWN and SIGTERM/SIGINT, the console past max_client_conn;
//! - `maintenance`: DISABLE/ENABLE, WAIT_CLOSE, KILL_CLIENT, SHOW STATE;
//! - `throttle`: failed logins slowed, then refused for a while.
//!
//! This file holds what they share: a pgdyno with `app` as admin, console
//! sessions, and result sets read by column name (`hosts` reads them too).

mod columns;
mod control;
mod maintenance;
mod throttle;
mod views;

use crate::harness::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, SimpleQueryMessage};

/// A pgdyno whose console `app` may use fully.
async fn pgdyno(extra: &[&str]) -> Pgdyno {
    let url = Cluster::shared().url(APP_DB);
    let mut args = vec!["--upstream", &url, "--admin-users", APP_USER];
    args.extend_from_slice(extra);
    Pgdyno::start(&args).await
}

/// A console session as `app` on the virtual database `db`.
async fn console_on(pgdyno: &Pgdyno, db: &str) -> Client {
    connect(&pgdyno.config(db))
        .await
        .unwrap_or_else(|e| panic!("console login on {db}: {e} ({:?})", e.as_db_error()))
}

async fn console(pgdyno: &Pgdyno) -> Client {
    console_on(pgdyno, "pgbouncer").await
}

/// One result set of the console: column names, then rows by column name.
pub(crate) struct Table {
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<BTreeMap<String, Option<String>>>,
}

impl Table {
    /// The value of `column` in `row`, failing if the column is absent.
    fn cell<'a>(&self, row: &'a BTreeMap<String, Option<String>>, column: &str) -> Option<&'a str> {
        row.get(column)
            .unwrap_or_else(|| panic!("no column {column} in {:?}", self.columns))
            .as_deref()
    }

    fn int(&self, row: &BTreeMap<String, Option<String>>, column: &str) -> i64 {
        let text = self
            .cell(row, column)
            .unwrap_or_else(|| panic!("{column} is NULL"));
        text.parse()
            .unwrap_or_else(|_| panic!("{column} = {text:?} is not an integer"))
    }
}

async fn try_show(client: &Client, sql: &str) -> Result<Table, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    let mut table = Table {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(columns) => {
                table.columns = columns.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                let values = row
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                    .collect();
                table.rows.push(values);
            }
            _ => {}
        }
    }
    Ok(table)
}

pub(crate) async fn show(client: &Client, sql: &str) -> Table {
    try_show(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e} ({:?})", e.as_db_error()))
}

/// The row of pool (db, user) in SHOW POOLS.
pub(crate) async fn pool_row(
    console: &Client,
    db: &str,
) -> (Table, BTreeMap<String, Option<String>>) {
    let table = show(console, "SHOW POOLS").await;
    let row = table
        .rows
        .iter()
        .find(|r| {
            r.get("database").cloned().flatten().as_deref() == Some(db)
                && r.get("user").cloned().flatten().as_deref() == Some(APP_USER)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no pool ({db}, {APP_USER}) in SHOW POOLS: {:?}", table.rows));
    (table, row)
}

async fn simple(client: &Client, sql: &str) {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e} ({:?})", e.as_db_error()));
}

async fn backend_pid(client: &Client) -> i32 {
    let row = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("SELECT pg_backend_pid()");
    row.get(0)
}
