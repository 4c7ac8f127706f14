//! Named prepared statements in transaction mode: every client keeps its
//! own statement names whichever backend its transaction lands on; the same
//! text is prepared once per backend for all clients; each backend holds at
//! most `max_prepared_statements`; Close, a re-used name (42P05), an unknown
//! name (26000), a failed Parse, DEALLOCATE ALL and DISCARD ALL behave as on
//! PostgreSQL itself. In session mode names reach PostgreSQL untouched.
//!
//! `pg_prepared_statements`, read through pgdyno, shows what the backend the
//! query runs on has prepared; with one backend in the pool that is the one
//! every client uses.

use crate::harness::*;
use futures_util::future::join_all;
use std::time::Duration;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

async fn pgdyno(pool_size: &str, extra: &[&str]) -> Pgdyno {
    let url = Cluster::shared().url(APP_DB);
    let mut args = vec![
        "--upstream",
        &url,
        "--pool-mode",
        "transaction",
        "--pool-size",
        pool_size,
    ];
    args.extend_from_slice(extra);
    Pgdyno::start(&args).await
}

/// (name, statement) of every statement prepared on the backend that runs
/// this query, by name.
async fn backend_statements(client: &Client) -> Vec<(String, String)> {
    let messages = client
        .simple_query("SELECT name, statement FROM pg_prepared_statements ORDER BY name")
        .await
        .expect("read pg_prepared_statements through pgdyno");
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((
                row.get(0).unwrap().to_owned(),
                row.get(1).unwrap().to_owned(),
            )),
            _ => None,
        })
        .collect()
}

fn fail(c: usize, e: tokio_postgres::Error) -> ! {
    panic!("client {c}: {e} ({:?})", e.as_db_error())
}

#[tokio::test]
async fn twenty_clients_run_named_statements_on_two_backends() {
    within(90, async {
        let pgdyno = pgdyno("2", &[]).await;
        let clients = join_all((0..20).map(|_| pgdyno.connect(APP_DB))).await;
        let results = join_all(clients.iter().enumerate().map(|(c, client)| async move {
            // One text every client prepares, one only this client has.
            let double = client.prepare("SELECT $1::int4 * 2").await?;
            let own = client
                .prepare(&format!("SELECT $1::text || '-of-{c}'"))
                .await?;
            let sum = client
                .prepare_typed("SELECT $1 + $2", &[Type::INT8, Type::INT8])
                .await?;
            for i in 0..15i32 {
                let n = c as i32 * 100 + i;
                let label = format!("q{i}");
                let (wide, million) = (n as i64, 1_000_000i64);
                let (pd, po, ps) = ([&n as _], [&label as _], [&wide as _, &million as _]);
                // Pipelined: all three go out before the first answer.
                let (d, o, s) = tokio::join!(
                    client.query_one(&double, &pd),
                    client.query_one(&own, &po),
                    client.query_one(&sum, &ps),
                );
                assert_eq!(d?.get::<_, i32>(0), n * 2, "client {c}");
                assert_eq!(o?.get::<_, String>(0), format!("q{i}-of-{c}"));
                assert_eq!(s?.get::<_, i64>(0), n as i64 + 1_000_000);
                if i % 5 == 4 {
                    // The same statements inside an explicit transaction.
                    client.batch_execute("BEGIN").await?;
                    let row = client.query_one(&double, &[&-n]).await?;
                    assert_eq!(row.get::<_, i32>(0), -2 * n);
                    let row = client.query_one(&own, &[&"tx"]).await?;
                    assert_eq!(row.get::<_, String>(0), format!("tx-of-{c}"));
                    client.batch_execute("COMMIT").await?;
                }
            }
            Ok::<_, tokio_postgres::Error>(())
        }))
        .await;
        for (c, result) in results.into_iter().enumerate() {
            if let Err(e) = result {
                fail(c, e);
            }
        }
    })
    .await
}

#[tokio::test]
async fn the_same_text_from_two_clients_is_one_backend_statement() {
    within(60, async {
        let pgdyno = pgdyno("1", &[]).await;
        let a = pgdyno.connect(APP_DB).await;
        let b = pgdyno.connect(APP_DB).await;
        let text = "SELECT $1::int4 * 7";
        let sa = a.prepare(text).await.unwrap_or_else(|e| fail(0, e));
        let row = a.query_one(&sa, &[&3i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 21);
        let sb = b.prepare(text).await.unwrap_or_else(|e| fail(1, e));
        let row = b.query_one(&sb, &[&4i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 28);
        let row = a.query_one(&sa, &[&5i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 35);

        let on_backend = backend_statements(&a).await;
        let copies: Vec<_> = on_backend.iter().filter(|(_, s)| s == text).collect();
        assert_eq!(
            copies.len(),
            1,
            "the backend should hold the text once: {on_backend:?}"
        );
        assert!(
            copies[0].0.starts_with("__pgdyno_"),
            "backend statement not under a pgdyno name: {on_backend:?}"
        );
        assert!(
            on_backend
                .iter()
                .all(|(name, _)| name.starts_with("__pgdyno_")),
            "a client's own statement name reached PostgreSQL: {on_backend:?}"
        );
    })
    .await
}

#[tokio::test]
async fn least_recently_used_statements_are_closed_beyond_the_limit() {
    within(90, async {
        let pgdyno = pgdyno("1", &["--max-prepared-statements", "2"]).await;
        let clients = [pgdyno.connect(APP_DB).await, pgdyno.connect(APP_DB).await];
        let texts: Vec<String> = (0..5).map(|k| format!("SELECT $1::int4 + {k}")).collect();
        let mut statements = Vec::new();
        for (c, client) in clients.iter().enumerate() {
            let mut mine = Vec::new();
            for text in &texts {
                mine.push(client.prepare(text).await.unwrap_or_else(|e| fail(c, e)));
            }
            statements.push(mine);
        }
        for round in 0..10i32 {
            for step in 0..5 {
                for (c, client) in clients.iter().enumerate() {
                    // The second client goes round the other way.
                    let k = if c == 0 { step } else { 4 - step };
                    let n = round * 1000 + c as i32;
                    let row = client
                        .query_one(&statements[c][k], &[&n])
                        .await
                        .unwrap_or_else(|e| fail(c, e));
                    assert_eq!(row.get::<_, i32>(0), n + k as i32, "round {round}");

                    let on_backend = backend_statements(client).await;
                    assert!(
                        on_backend.len() <= 2,
                        "more than --max-prepared-statements 2 on the backend: {on_backend:?}"
                    );
                    assert!(
                        on_backend.iter().any(|(_, s)| *s == texts[k]),
                        "the statement just run is not on the backend: {on_backend:?}"
                    );
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_closed_name_can_be_prepared_again_with_other_text() {
    within(60, async {
        let pgdyno = pgdyno("1", &[]).await;
        let mut a = pgdyno.connect_raw(APP_DB).await;
        let mut b = pgdyno.connect_raw(APP_DB).await;
        let msgs = a
            .exchange(Batch::new().parse("S_1", "SELECT 1").run("S_1", &[]).sync())
            .await;
        assert_tags(&msgs, "12DCZ", "first Parse of S_1");
        assert_eq!(single_value(&msgs).as_deref(), Some("1"));
        // Another client uses the same name and text.
        let msgs = b
            .exchange(Batch::new().parse("S_1", "SELECT 1").run("S_1", &[]).sync())
            .await;
        assert_tags(&msgs, "12DCZ", "the other client's S_1");

        let msgs = a.exchange(Batch::new().close_statement("S_1").sync()).await;
        assert_tags(&msgs, "3Z", "Close of S_1");
        let msgs = a
            .exchange(
                Batch::new()
                    .parse("S_1", "SELECT 'two', $1::int4")
                    .run("S_1", &[Some("22")])
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "12DCZ", "Parse of S_1 with new text after Close");
        assert_eq!(
            rows(&msgs),
            [[Some("two".to_owned()), Some("22".to_owned())]]
        );
        // Closing and re-preparing in one pipeline works too.
        let msgs = a
            .exchange(
                Batch::new()
                    .close_statement("S_1")
                    .parse("S_1", "SELECT 'three'")
                    .run("S_1", &[])
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "312DCZ", "Close, Parse, Bind, Execute in one batch");
        assert_eq!(single_value(&msgs).as_deref(), Some("three"));

        // The other client's S_1 is still its own.
        let msgs = b.exchange(Batch::new().run("S_1", &[]).sync()).await;
        assert_tags(&msgs, "2DCZ", "the other client's S_1 after the Close");
        assert_eq!(single_value(&msgs).as_deref(), Some("1"));
    })
    .await
}

#[tokio::test]
async fn a_live_name_parsed_again_is_42p05_and_the_connection_goes_on() {
    within(60, async {
        let pgdyno = pgdyno("2", &[]).await;
        let mut raw = pgdyno.connect_raw(APP_DB).await;
        let msgs = raw
            .exchange(Batch::new().parse("S_dup", "SELECT 'first'").sync())
            .await;
        assert_tags(&msgs, "1Z", "first Parse");

        // The Bind and Execute after the failed Parse are skipped up to Sync.
        let msgs = raw
            .exchange(
                Batch::new()
                    .parse("S_dup", "SELECT 'second'")
                    .run("S_dup", &[])
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "EZ", "Parse of a live name");
        let err = &errors(&msgs)[0];
        assert_eq!(err.code, "42P05", "{err:?}");
        assert_eq!(err.message, "prepared statement \"S_dup\" already exists");
        assert_eq!(ready_status(&msgs), 'I');

        let msgs = raw.exchange(Batch::new().run("S_dup", &[]).sync()).await;
        assert_tags(&msgs, "2DCZ", "S_dup after the 42P05");
        assert_eq!(single_value(&msgs).as_deref(), Some("first"));

        // Twice in one pipeline: the first Parse stands.
        let msgs = raw
            .exchange(
                Batch::new()
                    .parse("S_pair", "SELECT 'one'")
                    .parse("S_pair", "SELECT 'other'")
                    .run("S_pair", &[])
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "1EZ", "two Parses of one name in a pipeline");
        assert_eq!(errors(&msgs)[0].code, "42P05");
        let msgs = raw
            .exchange(Batch::new().run("S_pair", &[]).query("SELECT 42"))
            .await;
        assert_eq!(tags(&msgs), "2DCTDCZ", "{:?}", errors(&msgs));
        let values: Vec<_> = rows(&msgs).into_iter().map(|r| r[0].clone()).collect();
        assert_eq!(values, [Some("one".to_owned()), Some("42".to_owned())]);
    })
    .await
}

#[tokio::test]
async fn binding_an_unknown_name_is_26000() {
    within(60, async {
        let pgdyno = pgdyno("2", &[]).await;
        let mut raw = pgdyno.connect_raw(APP_DB).await;
        let msgs = raw
            .exchange(Batch::new().run("never_parsed", &[]).sync())
            .await;
        assert_tags(&msgs, "EZ", "Bind of an unknown name");
        let err = &errors(&msgs)[0];
        assert_eq!(err.code, "26000", "{err:?}");
        assert_eq!(
            err.message,
            "prepared statement \"never_parsed\" does not exist"
        );

        let msgs = raw
            .exchange(Batch::new().describe_statement("never_parsed").sync())
            .await;
        assert_tags(&msgs, "EZ", "Describe of an unknown name");
        assert_eq!(errors(&msgs)[0].code, "26000");

        let msgs = raw
            .exchange(Batch::new().query("SELECT 'still here'"))
            .await;
        assert_eq!(single_value(&msgs).as_deref(), Some("still here"));
    })
    .await
}

#[tokio::test]
async fn a_failed_parse_leaves_the_name_free() {
    within(60, async {
        let pgdyno = pgdyno("1", &[]).await;
        let mut a = pgdyno.connect_raw(APP_DB).await;
        let msgs = a
            .exchange(Batch::new().parse("S_bad", "SELEC 1").sync())
            .await;
        assert_tags(&msgs, "EZ", "Parse with a syntax error");
        assert_eq!(errors(&msgs)[0].code, "42601");

        let msgs = a.exchange(Batch::new().run("S_bad", &[]).sync()).await;
        assert_tags(&msgs, "EZ", "Bind of a name whose Parse failed");
        assert_eq!(errors(&msgs)[0].code, "26000");

        let msgs = a
            .exchange(
                Batch::new()
                    .parse("S_bad", "SELECT * FROM no_such_table_here")
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "EZ", "Parse naming a missing table");
        assert_eq!(errors(&msgs)[0].code, "42P01");

        let msgs = a
            .exchange(
                Batch::new()
                    .parse("S_bad", "SELECT 'fixed'")
                    .run("S_bad", &[])
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "12DCZ", "Parse of the same name, now valid");
        assert_eq!(single_value(&msgs).as_deref(), Some("fixed"));

        // The broken text was not remembered as prepared on the backend:
        // another client preparing it gets PostgreSQL's error too.
        let mut b = pgdyno.connect_raw(APP_DB).await;
        let msgs = b
            .exchange(
                Batch::new()
                    .parse("S_other", "SELEC 1")
                    .run("S_other", &[])
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "EZ", "the other client's Parse of the broken text");
        assert_eq!(errors(&msgs)[0].code, "42601");
    })
    .await
}

/// What a driver user sees: preparing a broken query again reports the
/// same syntax error, from this client or another.
#[tokio::test]
async fn a_query_that_failed_to_prepare_fails_alike_every_time() {
    within(60, async {
        let pgdyno = pgdyno("1", &[]).await;
        let clients = [pgdyno.connect(APP_DB).await, pgdyno.connect(APP_DB).await];
        for attempt in 0..3 {
            for (c, client) in clients.iter().enumerate() {
                let err = client
                    .prepare("SELEC $1::int4")
                    .await
                    .expect_err("a syntax error cannot be prepared");
                assert_eq!(
                    sqlstate(&err),
                    Some("42601"),
                    "attempt {attempt}, client {c}: {err} ({:?})",
                    err.as_db_error()
                );
            }
        }
    })
    .await
}

/// After an error PostgreSQL skips everything up to Sync, a Parse included:
/// that statement exists nowhere, for this client or any other.
#[tokio::test]
async fn a_parse_skipped_after_an_error_prepares_nothing() {
    within(60, async {
        let pgdyno = pgdyno("1", &[]).await;
        let mut a = pgdyno.connect_raw(APP_DB).await;
        let msgs = a
            .exchange(
                Batch::new()
                    .run("never_parsed", &[])
                    .parse("S_skipped", "SELECT 'skipped'")
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "EZ", "a Parse after a failed Bind");
        assert_eq!(errors(&msgs)[0].code, "26000");

        let msgs = a.exchange(Batch::new().run("S_skipped", &[]).sync()).await;
        assert_tags(&msgs, "EZ", "Bind of the skipped statement");
        assert_eq!(errors(&msgs)[0].code, "26000");

        let mut b = pgdyno.connect_raw(APP_DB).await;
        let msgs = b
            .exchange(
                Batch::new()
                    .parse("S_b", "SELECT 'skipped'")
                    .run("S_b", &[])
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "12DCZ", "another client preparing the same text");
        assert_eq!(single_value(&msgs).as_deref(), Some("skipped"));
    })
    .await
}

#[tokio::test]
async fn a_100_kb_statement_runs_on_every_backend() {
    within(90, async {
        let pgdyno = pgdyno("2", &[]).await;
        let a = pgdyno.connect(APP_DB).await;
        let b = pgdyno.connect(APP_DB).await;
        let big = "x".repeat(100_000);
        let text = format!("SELECT length('{big}'::text) + $1::int4");
        let sa = a.prepare(&text).await.unwrap_or_else(|e| fail(0, e));
        let sb = b.prepare(&text).await.unwrap_or_else(|e| fail(1, e));

        // Each holds one of the two backends for its transaction.
        a.batch_execute("BEGIN").await.unwrap();
        b.batch_execute("BEGIN").await.unwrap();
        let pid_a: i32 = a
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let pid_b: i32 = b
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        assert_ne!(pid_a, pid_b, "two open transactions on one backend");
        for (c, (client, statement)) in [(&a, &sa), (&b, &sb)].into_iter().enumerate() {
            let row = client
                .query_one(statement, &[&(c as i32)])
                .await
                .unwrap_or_else(|e| fail(c, e));
            assert_eq!(row.get::<_, i32>(0), 100_000 + c as i32);
            let big_ones = backend_statements(client)
                .await
                .into_iter()
                .filter(|(_, s)| *s == text)
                .count();
            assert_eq!(big_ones, 1, "client {c}'s backend");
        }
        a.batch_execute("COMMIT").await.unwrap();
        b.batch_execute("COMMIT").await.unwrap();

        for i in 0..10i32 {
            let minus = -i;
            let (pa, pb) = ([&i as _], [&minus as _]);
            let (ra, rb) = tokio::join!(a.query_one(&sa, &pa), b.query_one(&sb, &pb));
            assert_eq!(
                ra.unwrap_or_else(|e| fail(0, e)).get::<_, i32>(0),
                100_000 + i
            );
            assert_eq!(
                rb.unwrap_or_else(|e| fail(1, e)).get::<_, i32>(0),
                100_000 - i
            );
        }
    })
    .await
}

#[tokio::test]
async fn statement_names_of_63_characters_work() {
    within(60, async {
        let pgdyno = pgdyno("2", &[]).await;
        let mut raw = pgdyno.connect_raw(APP_DB).await;
        // Differ only in their last character.
        let alpha = format!("{}a", "n".repeat(62));
        let beta = format!("{}b", "n".repeat(62));
        let msgs = raw
            .exchange(
                Batch::new()
                    .parse(&alpha, "SELECT 'alpha'")
                    .parse(&beta, "SELECT 'beta', $1::int4")
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "11Z", "Parse of two 63-character names");
        let msgs = raw
            .exchange(
                Batch::new()
                    .run(&alpha, &[])
                    .run(&beta, &[Some("7")])
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "2DC2DCZ", "Bind of two 63-character names");
        assert_eq!(
            rows(&msgs),
            [
                vec![Some("alpha".to_owned())],
                vec![Some("beta".to_owned()), Some("7".to_owned())]
            ]
        );
        let msgs = raw
            .exchange(Batch::new().describe_statement(&beta).sync())
            .await;
        assert_tags(&msgs, "tTZ", "Describe of a 63-character name");

        let msgs = raw
            .exchange(Batch::new().close_statement(&alpha).sync())
            .await;
        assert_tags(&msgs, "3Z", "Close of a 63-character name");
        let msgs = raw.exchange(Batch::new().run(&alpha, &[]).sync()).await;
        assert_eq!(errors(&msgs)[0].code, "26000", "closed name still bound");
        let msgs = raw
            .exchange(Batch::new().run(&beta, &[Some("8")]).sync())
            .await;
        assert_tags(&msgs, "2DCZ", "the other name after the Close");
    })
    .await
}

/// DEALLOCATE ALL and DISCARD ALL forget the client's own statements, and
/// only its own: another client on the same backend keeps using its.
#[tokio::test]
async fn deallocate_all_and_discard_all_forget_only_the_clients_statements() {
    within(60, async {
        let pgdyno = pgdyno("1", &[]).await;
        let mut a = pgdyno.connect_raw(APP_DB).await;
        let mut b = pgdyno.connect_raw(APP_DB).await;
        let msgs = b
            .exchange(
                Batch::new()
                    .parse("S_b", "SELECT 'b'")
                    .run("S_b", &[])
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "12DCZ", "B's statement");

        for reset in ["DEALLOCATE ALL", "DISCARD ALL"] {
            let msgs = a
                .exchange(
                    Batch::new()
                        .parse("S_a", "SELECT 'a'")
                        .run("S_a", &[])
                        .sync(),
                )
                .await;
            assert_tags(&msgs, "12DCZ", &format!("A's statement before {reset}"));

            let msgs = a.exchange(Batch::new().query(reset)).await;
            assert_tags(&msgs, "CZ", reset);

            let msgs = a.exchange(Batch::new().run("S_a", &[]).sync()).await;
            assert_tags(&msgs, "EZ", &format!("A's statement after {reset}"));
            assert_eq!(errors(&msgs)[0].code, "26000");

            let msgs = b.exchange(Batch::new().run("S_b", &[]).sync()).await;
            assert_tags(&msgs, "2DCZ", &format!("B's statement after A's {reset}"));
            assert_eq!(single_value(&msgs).as_deref(), Some("b"));

            // The name is free again: a new text, no 42P05.
            let msgs = a
                .exchange(
                    Batch::new()
                        .parse("S_a", "SELECT 'a again'")
                        .run("S_a", &[])
                        .close_statement("S_a")
                        .sync(),
                )
                .await;
            assert_tags(&msgs, "12DC3Z", &format!("S_a re-prepared after {reset}"));
            assert_eq!(single_value(&msgs).as_deref(), Some("a again"));
        }
    })
    .await
}

#[tokio::test]
async fn session_mode_passes_statement_names_through() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--pool-mode",
            "session",
            "--pool-size",
            "2",
        ])
        .await;
        let mut raw = pgdyno.connect_raw(APP_DB).await;
        let msgs = raw
            .exchange(
                Batch::new()
                    .parse("my_statement", "SELECT $1::int4 + 100")
                    .run("my_statement", &[Some("1")])
                    .sync(),
            )
            .await;
        assert_tags(&msgs, "12DCZ", "Parse and Bind in session mode");
        assert_eq!(single_value(&msgs).as_deref(), Some("101"));
        let msgs = raw
            .exchange(
                Batch::new()
                    .query("SELECT name, statement FROM pg_prepared_statements ORDER BY name"),
            )
            .await;
        assert_eq!(
            rows(&msgs),
            [[
                Some("my_statement".to_owned()),
                Some("SELECT $1::int4 + 100".to_owned())
            ]]
        );
    })
    .await
}

/// A Parse that arrives in pieces, with pauses between them, is read to its
/// end on the backend it started on: the stretch is not released while part
/// of a client message is read (the client's next poll would find the same
/// half message and release again, for ever), and reading goes on past the
/// relay's 64 kB read-ahead until the message is whole (a first piece of
/// 70 kB used to stop it there). Another client of the one-backend pool is
/// served once the first one's transaction ends.
#[tokio::test]
async fn a_parse_sent_in_pieces_runs_whole() {
    within(60, async {
        let pgdyno = pgdyno("1", &[]).await;
        let other = pgdyno.connect(APP_DB).await;
        let mut raw = RawConn::connect(pgdyno.port()).await;
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
            .await
            .expect("raw login");
        let big = "y".repeat(100_000);
        let mut msgs = bytes::BytesMut::new();
        postgres_protocol::message::frontend::parse(
            "s1",
            &format!("SELECT length('{big}')"),
            std::iter::empty(),
            &mut msgs,
        )
        .unwrap();
        let parse_len = msgs.len();
        postgres_protocol::message::frontend::bind(
            "",
            "s1",
            std::iter::empty::<i16>(),
            std::iter::empty::<()>(),
            |_, _| Ok(postgres_protocol::IsNull::No),
            Some(0),
            &mut msgs,
        )
        .unwrap_or_else(|_| panic!("Bind"));
        postgres_protocol::message::frontend::execute("", 0, &mut msgs).unwrap();
        postgres_protocol::message::frontend::sync(&mut msgs);

        // The header, 70 kB of the Parse, a pause, the rest...
        let cuts = [0, 7, 70_000, parse_len - 10, msgs.len()];
        let sender = async {
            for w in cuts.windows(2) {
                raw.send(&msgs[w[0]..w[1]]).await.expect("send");
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            raw.until_ready().await
        };
        // Meanwhile the other client queries the same (only) backend.
        let (replies, row) = tokio::join!(sender, async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            other.query_typed_one("SELECT 2", &[]).await
        });
        let tags: Vec<char> = replies.iter().map(|m| m.tag as char).collect();
        assert_eq!(tags, ['1', '2', 'D', 'C', 'Z'], "{replies:?}");
        let data = &replies[2].body;
        assert!(data.ends_with(b"100000"), "DataRow {data:?}");
        assert_eq!(row.expect("the other client").get::<_, i32>(0), 2);
    })
    .await
}
