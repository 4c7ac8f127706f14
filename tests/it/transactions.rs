//! Transactions through pgdyno: what other clients see before and after
//! COMMIT or ROLLBACK, an error inside a transaction, and a client that
//! vanishes mid-transaction: its work must never become visible and its
//! backend must never be handed to the next client still in that
//! transaction.

use crate::harness::*;
use std::time::{Duration, Instant};

/// A fresh table in appdb, created straight on PostgreSQL.
async fn table(name: &str) -> tokio_postgres::Client {
    let direct = Cluster::shared().direct(APP_DB).await;
    direct
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int PRIMARY KEY)"
        ))
        .await
        .expect("create table");
    direct
}

async fn ids(client: &impl tokio_postgres::GenericClient, table: &str) -> Vec<i32> {
    client
        .query_typed(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .await
        .expect("read table")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn pgdyno(pool_size: &str) -> Pgdyno {
    Pgdyno::start(&[
        "--upstream",
        &Cluster::shared().url(APP_DB),
        "--pool-size",
        pool_size,
    ])
    .await
}

#[tokio::test]
async fn committed_rows_appear_to_others_only_after_commit() {
    within(60, async {
        let direct = table("tx_commit").await;
        let pgdyno = pgdyno("5").await;
        let mut writer = pgdyno.connect(APP_DB).await;
        let reader = pgdyno.connect(APP_DB).await;

        let tx = writer.transaction().await.unwrap();
        tx.execute_typed("INSERT INTO tx_commit VALUES (1), (2)", &[])
            .await
            .unwrap();
        assert_eq!(
            ids(&tx, "tx_commit").await,
            [1, 2],
            "own rows, before commit"
        );
        assert!(
            ids(&reader, "tx_commit").await.is_empty(),
            "uncommitted rows leaked"
        );
        tx.commit().await.expect("COMMIT through pgdyno");

        assert_eq!(ids(&reader, "tx_commit").await, [1, 2]);
        assert_eq!(ids(&direct, "tx_commit").await, [1, 2]);
    })
    .await
}

#[tokio::test]
async fn rolled_back_rows_never_appear() {
    within(60, async {
        let direct = table("tx_rollback").await;
        let pgdyno = pgdyno("5").await;
        let mut writer = pgdyno.connect(APP_DB).await;
        let tx = writer.transaction().await.unwrap();
        tx.execute_typed("INSERT INTO tx_rollback VALUES (1)", &[])
            .await
            .unwrap();
        tx.rollback().await.expect("ROLLBACK through pgdyno");

        writer
            .execute_typed("INSERT INTO tx_rollback VALUES (2)", &[])
            .await
            .expect("autocommit insert after the rollback");
        assert_eq!(ids(&writer, "tx_rollback").await, [2]);
        assert_eq!(ids(&direct, "tx_rollback").await, [2]);
    })
    .await
}

#[tokio::test]
async fn error_inside_a_transaction_then_rollback_and_carry_on() {
    within(60, async {
        let direct = table("tx_error").await;
        let pgdyno = pgdyno("5").await;
        let client = pgdyno.connect(APP_DB).await;
        client
            .batch_execute("BEGIN; INSERT INTO tx_error VALUES (1)")
            .await
            .unwrap();
        let err = client.batch_execute("SELECT 1 / 0").await.unwrap_err();
        assert_eq!(sqlstate(&err), Some("22012"), "{err}");
        let err = client.batch_execute("SELECT 1").await.unwrap_err();
        assert_eq!(
            sqlstate(&err),
            Some("25P02"),
            "still in the failed transaction: {err}"
        );
        client.batch_execute("ROLLBACK").await.expect("ROLLBACK");

        let row = client.query_typed_one("SELECT 41 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        assert!(ids(&client, "tx_error").await.is_empty());
        assert!(ids(&direct, "tx_error").await.is_empty());
    })
    .await
}

/// How the client goes away in the middle of its transaction.
enum Vanish {
    /// The socket is dropped: no Terminate message.
    DropSocket,
    /// tokio-postgres sends Terminate and closes.
    Terminate,
    /// The socket is dropped while a long statement runs.
    DuringLongQuery,
}

/// With a pool of one backend, the next client necessarily gets the backend
/// the vanished client had: it must not be inside that transaction.
async fn vanish_mid_transaction(table_name: &str, how: Vanish) {
    let direct = table(table_name).await;
    let pgdyno = pgdyno("1").await;
    let (client, _notices, task) = connect_with_notices(&pgdyno.config(APP_DB))
        .await
        .expect("connect through pgdyno");
    client
        .batch_execute(&format!("BEGIN; INSERT INTO {table_name} VALUES (1)"))
        .await
        .unwrap();
    match how {
        Vanish::DropSocket => task.abort(),
        Vanish::Terminate => drop(client),
        Vanish::DuringLongQuery => {
            let sleeping = tokio::spawn(async move {
                let _ = client.batch_execute("SELECT pg_sleep(60)").await;
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            task.abort();
            sleeping.abort();
        }
    }

    let started = Instant::now();
    let next = pgdyno.connect(APP_DB).await;
    let row = tokio::time::timeout(
        Duration::from_secs(15),
        next.query_typed_one("SELECT pg_current_xact_id_if_assigned()::text", &[]),
    )
    .await
    .expect("the next client waited more than 15 s for the only backend")
    .expect("the next client's query");
    assert_eq!(
        row.get::<_, Option<String>>(0),
        None,
        "the next client ran inside the vanished client's transaction"
    );
    next.execute_typed(&format!("INSERT INTO {table_name} VALUES (2)"), &[])
        .await
        .expect("the next client's insert");
    assert_eq!(ids(&next, table_name).await, [2]);
    assert!(started.elapsed() < Duration::from_secs(15));

    // And the vanished insert stays gone, seen from PostgreSQL directly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ids(&direct, table_name).await, [2]);
    for _ in 0..5 {
        let client = pgdyno.connect(APP_DB).await;
        assert_eq!(ids(&client, table_name).await, [2]);
    }
}

#[tokio::test]
async fn client_dropping_its_socket_mid_transaction_leaves_no_trace() {
    within(
        60,
        vanish_mid_transaction("tx_vanish_socket", Vanish::DropSocket),
    )
    .await
}

#[tokio::test]
async fn client_terminating_mid_transaction_leaves_no_trace() {
    within(
        60,
        vanish_mid_transaction("tx_vanish_terminate", Vanish::Terminate),
    )
    .await
}

/// The backend is busy for another minute; the next client should not
/// have to wait for it.
#[tokio::test]
async fn client_vanishing_during_a_long_query_does_not_block_the_pool() {
    within(
        60,
        vanish_mid_transaction("tx_vanish_busy", Vanish::DuringLongQuery),
    )
    .await
}
