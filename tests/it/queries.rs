//! Queries through pgdyno in transaction mode: the simple and extended
//! protocols, many rows, pipelining (with and without an error in the
//! middle), named prepared statements while backends are shared, NOTICEs,
//! cancelling a query, and psql.

use crate::harness::*;
use futures_util::future::join_all;
use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;

async fn pgdyno(pool_size: &str) -> Pgdyno {
    let cluster = Cluster::shared();
    Pgdyno::start(&[
        "--upstream",
        &cluster.url(APP_DB),
        "--pool-mode",
        "transaction",
        "--pool-size",
        pool_size,
    ])
    .await
}

fn simple_rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn simple_query_with_several_statements() {
    within(60, async {
        let pgdyno = pgdyno("5").await;
        let client = pgdyno.connect(APP_DB).await;
        let messages = client
            .simple_query("SELECT 1 AS one, NULL AS nothing; SELECT 'two', current_database()")
            .await
            .expect("simple query through pgdyno");
        assert_eq!(
            simple_rows(&messages),
            vec![
                vec![Some("1".to_owned()), None],
                vec![Some("two".to_owned()), Some(APP_DB.to_owned())],
            ]
        );
    })
    .await
}

#[tokio::test]
async fn extended_query_with_typed_parameters() {
    within(60, async {
        let pgdyno = pgdyno("5").await;
        let client = pgdyno.connect(APP_DB).await;
        let bytes: &[u8] = &[0, 1, 2, 255];
        let nothing: Option<i64> = None;
        let row = client
            .query_typed_one(
                "SELECT $1 + 1, $2 || '!', $3 * 2, NOT $4, $5, $6 IS NULL",
                &[
                    (&41i32, Type::INT4),
                    (&"héllo", Type::TEXT),
                    (&1.25f64, Type::FLOAT8),
                    (&false, Type::BOOL),
                    (&bytes, Type::BYTEA),
                    (&nothing, Type::INT8),
                ],
            )
            .await
            .expect("extended query through pgdyno");
        assert_eq!(row.get::<_, i32>(0), 42);
        assert_eq!(row.get::<_, String>(1), "héllo!");
        assert_eq!(row.get::<_, f64>(2), 2.5);
        assert!(row.get::<_, bool>(3));
        assert_eq!(row.get::<_, Vec<u8>>(4), bytes);
        assert!(row.get::<_, bool>(5));
    })
    .await
}

#[tokio::test]
async fn many_rows_arrive_complete_and_in_order() {
    within(90, async {
        let pgdyno = pgdyno("5").await;
        let client = pgdyno.connect(APP_DB).await;
        let n = 100_000i32;
        let rows = client
            .query_typed(
                "SELECT g, md5(g::text) FROM generate_series(1, $1) g ORDER BY g",
                &[(&n, Type::INT4)],
            )
            .await
            .expect("extended query with many rows");
        assert_eq!(rows.len(), n as usize);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.get::<_, i32>(0), i as i32 + 1, "row {i} out of order");
            assert_eq!(row.get::<_, &str>(1).len(), 32);
        }
        let messages = client
            .simple_query("SELECT g, repeat('x', g % 50) FROM generate_series(1, 100000) g")
            .await
            .expect("simple query with many rows");
        let rows = simple_rows(&messages);
        assert_eq!(rows.len(), 100_000);
        let total: usize = rows.iter().map(|r| r[1].as_ref().unwrap().len()).sum();
        assert_eq!(total, (1..=100_000).map(|g| g % 50).sum::<usize>());
    })
    .await
}

#[tokio::test]
async fn pipelined_queries_all_answered_in_order() {
    within(60, async {
        let pgdyno = pgdyno("5").await;
        let client = pgdyno.connect(APP_DB).await;
        // Polled together, these go out before the first answer comes back.
        let (slow, fast, param, text) = tokio::join!(
            client.query_typed("SELECT 1 FROM pg_sleep(0.2)", &[]),
            client.query_typed("SELECT 2", &[]),
            client.query_typed("SELECT $1::int8 * 3", &[(&7i64, Type::INT8)]),
            client.simple_query("SELECT 'four'"),
        );
        assert_eq!(slow.unwrap()[0].get::<_, i32>(0), 1);
        assert_eq!(fast.unwrap()[0].get::<_, i32>(0), 2);
        assert_eq!(param.unwrap()[0].get::<_, i64>(0), 21);
        assert_eq!(
            simple_rows(&text.unwrap()),
            vec![vec![Some("four".to_owned())]]
        );

        let many = join_all((0..50i32).map(|i| {
            let client = &client;
            async move {
                client
                    .query_typed_one("SELECT $1::int4", &[(&i, Type::INT4)])
                    .await
                    .map(|row| row.get::<_, i32>(0))
            }
        }))
        .await;
        for (i, answer) in many.into_iter().enumerate() {
            assert_eq!(answer.expect("pipelined query"), i as i32);
        }
    })
    .await
}

#[tokio::test]
async fn error_in_a_pipeline_fails_only_its_own_query() {
    within(60, async {
        let pgdyno = pgdyno("5").await;
        let client = pgdyno.connect(APP_DB).await;
        let (before, failing, after) = tokio::join!(
            client.query_typed("SELECT 1", &[]),
            client.query_typed("SELECT 1 / 0", &[]),
            client.query_typed("SELECT 3", &[]),
        );
        assert_eq!(before.unwrap()[0].get::<_, i32>(0), 1);
        let err = failing.expect_err("division by zero must fail");
        assert_eq!(sqlstate(&err), Some("22012"), "{err}");
        assert_eq!(after.unwrap()[0].get::<_, i32>(0), 3);
        let row = client.query_typed_one("SELECT 4", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 4);
    })
    .await
}

/// tokio-postgres prepares named statements, then runs them in later
/// transactions, which may land on other backends. pgdyno must make that
/// work, as PgBouncer does with max_prepared_statements.
#[tokio::test]
async fn named_prepared_statements_work_across_shared_backends() {
    within(60, async {
        let pgdyno = pgdyno("2").await;
        let clients = join_all((0..4).map(|_| pgdyno.connect(APP_DB))).await;
        let results = join_all(clients.iter().enumerate().map(|(c, client)| async move {
            let double = client.prepare("SELECT $1::int4 * 2").await?;
            let hold = client.prepare("SELECT pg_sleep(0.01), $1::int4").await?;
            for i in 0..25i32 {
                let n = c as i32 * 1000 + i;
                let row = client.query_one(&double, &[&n]).await?;
                assert_eq!(row.get::<_, i32>(0), n * 2);
                let row = client.query_one(&hold, &[&n]).await?;
                assert_eq!(row.get::<_, i32>(1), n);
            }
            Ok::<_, tokio_postgres::Error>(())
        }))
        .await;
        for (c, result) in results.into_iter().enumerate() {
            if let Err(e) = result {
                panic!("client {c}: {e} ({:?})", e.as_db_error());
            }
        }
    })
    .await
}

#[tokio::test]
async fn notice_reaches_the_client() {
    within(60, async {
        let pgdyno = pgdyno("5").await;
        let (client, mut notices, _task) = connect_with_notices(&pgdyno.config(APP_DB))
            .await
            .expect("connect through pgdyno");
        client
            .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; END $$")
            .await
            .expect("DO block");
        let notice = tokio::time::timeout(std::time::Duration::from_secs(5), notices.recv())
            .await
            .expect("no NOTICE within 5 s")
            .expect("connection closed");
        assert_eq!(notice.message(), "hello from plpgsql");
        assert_eq!(notice.severity(), "NOTICE");
    })
    .await
}

#[tokio::test]
async fn cancel_request_stops_a_running_query() {
    within(60, async {
        let pgdyno = pgdyno("5").await;
        let client = pgdyno.connect(APP_DB).await;
        let token = client.cancel_token();
        let started = std::time::Instant::now();
        let cancel = async {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            token.cancel_query(tokio_postgres::NoTls).await
        };
        let (result, cancelled) = tokio::join!(client.simple_query("SELECT pg_sleep(30)"), cancel);
        cancelled.expect("send CancelRequest to pgdyno");
        let err = result.expect_err("the cancelled query must fail");
        assert_eq!(sqlstate(&err), Some("57014"), "{err}");
        assert!(
            started.elapsed().as_secs() < 10,
            "the cancel took effect late"
        );
        let row = client.query_typed_one("SELECT 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
    })
    .await
}

#[tokio::test]
async fn psql_runs_commands_and_shows_notices() {
    within(60, async {
        let pgdyno = pgdyno("5").await;
        let out = psql(pgdyno.port(), APP_DB, &["-Atc", "SELECT 40 + 2"]).await;
        assert!(out.status.success(), "psql failed:\n{}", output_text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

        let out = psql(
            pgdyno.port(),
            APP_DB,
            &[
                "-c",
                "DO $$ BEGIN RAISE NOTICE 'psql sees %', 'this'; END $$",
                "-c",
                "SELECT 1 / 0",
            ],
        )
        .await;
        let text = output_text(&out);
        assert!(text.contains("NOTICE:  psql sees this"), "{text}");
        assert!(text.contains("division by zero"), "{text}");
        assert!(!out.status.success(), "psql must report the error");
    })
    .await
}
