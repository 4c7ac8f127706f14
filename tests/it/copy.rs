//! COPY through pgdyno, megabytes each way: COPY FROM STDIN must store
//! exactly the bytes sent, COPY TO STDOUT must deliver exactly what
//! PostgreSQL produced, and a bad row must fail the COPY without breaking
//! the connection.

use crate::harness::*;
use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt};
use std::pin::pin;

const ROWS: usize = 120_000;

/// Rows of varying width, about 7 MB in all, in COPY text format.
fn copy_text() -> Vec<u8> {
    let mut out = Vec::new();
    for id in 1..=ROWS {
        let width = id * 7 % 120;
        let letter = (b'a' + (id % 26) as u8) as char;
        out.extend_from_slice(format!("{id}\t{}\n", letter.to_string().repeat(width)).as_bytes());
    }
    out
}

async fn pgdyno() -> Pgdyno {
    Pgdyno::start(&[
        "--upstream",
        &Cluster::shared().url(APP_DB),
        "--pool-size",
        "3",
    ])
    .await
}

/// tokio-postgres prepares a COPY statement before running it; inside a
/// transaction both steps use the same backend (named prepared statements
/// across transactions have their own test in `queries`).
async fn copy_out_all(client: &mut tokio_postgres::Client, sql: &str) -> Vec<u8> {
    let tx = client.transaction().await.expect("BEGIN");
    let stream = tx.copy_out(sql).await.expect("start COPY TO STDOUT");
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("COPY TO STDOUT data");
    tx.commit().await.expect("COMMIT after COPY TO STDOUT");
    chunks.concat()
}

#[tokio::test]
async fn copy_from_stdin_stores_every_byte() {
    within(120, async {
        let mut direct = Cluster::shared().direct(APP_DB).await;
        direct
            .batch_execute(
                "DROP TABLE IF EXISTS copy_in_t; CREATE TABLE copy_in_t (id int, payload text)",
            )
            .await
            .unwrap();
        let pgdyno = pgdyno().await;
        let mut client = pgdyno.connect(APP_DB).await;
        let data = copy_text();
        assert!(
            data.len() > 5_000_000,
            "test data is only {} bytes",
            data.len()
        );

        let tx = client.transaction().await.expect("BEGIN");
        let sink = tx
            .copy_in("COPY copy_in_t FROM STDIN")
            .await
            .expect("start COPY FROM STDIN");
        let mut sink = pin!(sink);
        for chunk in data.chunks(64 * 1024) {
            sink.send(Bytes::copy_from_slice(chunk))
                .await
                .expect("send COPY data");
        }
        let copied = sink.finish().await.expect("finish COPY FROM STDIN");
        assert_eq!(copied, ROWS as u64);
        tx.commit().await.expect("COMMIT after COPY FROM STDIN");

        let stored = copy_out_all(
            &mut direct,
            "COPY (SELECT * FROM copy_in_t ORDER BY id) TO STDOUT",
        )
        .await;
        assert!(
            stored == data,
            "PostgreSQL holds other bytes than were sent"
        );
        let row = client
            .query_typed_one("SELECT count(*), sum(length(payload)) FROM copy_in_t", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), ROWS as i64);
    })
    .await
}

#[tokio::test]
async fn copy_to_stdout_delivers_every_byte() {
    within(120, async {
        let pgdyno = pgdyno().await;
        let mut client = pgdyno.connect(APP_DB).await;
        let received = copy_out_all(
            &mut client,
            &format!(
                "COPY (SELECT g, repeat(chr(97 + g % 26), g * 7 % 120) \
                 FROM generate_series(1, {ROWS}) g) TO STDOUT"
            ),
        )
        .await;
        let expected = copy_text();
        assert_eq!(received.len(), expected.len());
        assert!(received == expected, "COPY TO STDOUT bytes differ");

        // The connection is still in step afterwards.
        let row = client.query_typed_one("SELECT 7", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 7);
    })
    .await
}

#[tokio::test]
async fn bad_row_fails_the_copy_and_the_connection_carries_on() {
    within(60, async {
        let direct = Cluster::shared().direct(APP_DB).await;
        direct
            .batch_execute("DROP TABLE IF EXISTS copy_bad_t; CREATE TABLE copy_bad_t (id int)")
            .await
            .unwrap();
        let pgdyno = pgdyno().await;
        let mut client = pgdyno.connect(APP_DB).await;
        let tx = client.transaction().await.expect("BEGIN");
        let sink = tx.copy_in("COPY copy_bad_t FROM STDIN").await.unwrap();
        let mut sink = pin!(sink);
        let mut rows = (1..=1000).map(|i| format!("{i}\n")).collect::<String>();
        rows.push_str("not-a-number\n");
        // The error may come back while sending or at the end.
        let result = match sink.send(Bytes::from(rows)).await {
            Ok(()) => sink.finish().await.map(|_| ()),
            Err(e) => Err(e),
        };
        let err = result.expect_err("a bad row must fail the COPY");
        assert_eq!(sqlstate(&err), Some("22P02"), "{err}");
        tx.rollback().await.expect("ROLLBACK after the failed COPY");

        let row = client
            .query_typed_one("SELECT count(*) FROM copy_bad_t", &[])
            .await
            .expect("the connection works after the failed COPY");
        assert_eq!(row.get::<_, i64>(0), 0);
    })
    .await
}
