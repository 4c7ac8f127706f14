//! Session parameters in transaction mode: each client sees its own
//! TimeZone, DateStyle, IntervalStyle, application_name, client_encoding and
//! standard_conforming_strings, however its transactions interleave with
//! other clients' on one backend, whether it set them at startup, with
//! `options=-c k=v` or with SET; SETs undone by ROLLBACK stay undone.
//!
//! The oracle is PostgreSQL itself: every client through pgdyno has a twin
//! connected straight to PostgreSQL with the same settings, and the two must
//! answer every query alike.

use crate::harness::*;
use std::collections::HashMap;
use tokio_postgres::{Client, Config, SimpleQueryMessage};

/// One backend: every client's transactions take turns on it.
async fn pgdyno() -> Pgdyno {
    Pgdyno::start(&[
        "--upstream",
        &Cluster::shared().url(APP_DB),
        "--pool-mode",
        "transaction",
        "--pool-size",
        "1",
    ])
    .await
}

/// What the settings under test show, and values they change the text of.
const PROBE: &str = "SHOW TimeZone; SHOW DateStyle; SHOW application_name; \
    SHOW IntervalStyle; SHOW standard_conforming_strings; \
    SELECT '2020-01-02 03:04:05+00'::timestamptz::text, \
           '1 day 2 hours 3 minutes'::interval::text, \
           length('a\\b')";

type Rows = Vec<Vec<Option<String>>>;

/// Rows of a simple query, or the SQLSTATE it failed with.
async fn simple(client: &Client, sql: &str) -> Result<Rows, String> {
    match client.simple_query(sql).await {
        Ok(messages) => Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect()),
        Err(e) => Err(sqlstate(&e).unwrap_or("no SQLSTATE").to_owned()),
    }
}

/// A client through pgdyno and its twin straight on PostgreSQL.
struct Twin {
    name: &'static str,
    via: Client,
    direct: Client,
}

impl Twin {
    /// Both connect with these `options` and `application_name`.
    async fn connect(pgdyno: &Pgdyno, name: &'static str, options: &str, app: &str) -> Twin {
        let mut via = pgdyno.config(APP_DB);
        let mut direct: Config = Cluster::shared().url(APP_DB).parse().unwrap();
        for config in [&mut via, &mut direct] {
            config.application_name(app);
            if !options.is_empty() {
                config.options(options);
            }
        }
        Twin {
            name,
            via: connect(&via).await.expect("connect through pgdyno"),
            direct: connect(&direct).await.expect("connect to PostgreSQL"),
        }
    }

    /// Runs `sql` on both; pgdyno's answer must be PostgreSQL's.
    async fn same(&self, sql: &str) -> Rows {
        let direct = simple(&self.direct, sql).await;
        let via = simple(&self.via, sql).await;
        assert_eq!(
            via, direct,
            "{}: `{sql}` through pgdyno (left) differs from PostgreSQL (right)",
            self.name
        );
        via.unwrap_or_default()
    }

    async fn show(&self, parameter: &str) -> String {
        let rows = self.same(&format!("SHOW {parameter}")).await;
        rows[0][0].clone().unwrap()
    }
}

#[tokio::test]
async fn interleaved_clients_on_one_backend_each_see_their_own_settings() {
    within(120, async {
        let pgdyno = pgdyno().await;
        let a = Twin::connect(
            &pgdyno,
            "A",
            "-c TimeZone=Asia/Tokyo -c DateStyle=SQL,DMY -c IntervalStyle=iso_8601",
            "client-a",
        )
        .await;
        let b = Twin::connect(&pgdyno, "B", "", "client-b-at-start").await;
        b.same(
            "SET TimeZone = 'America/New_York'; SET DateStyle = 'German'; \
             SET application_name = 'client-b'; SET standard_conforming_strings = off",
        )
        .await;
        assert_eq!(a.show("TimeZone").await, "Asia/Tokyo");
        assert_eq!(b.show("TimeZone").await, "America/New_York");

        for i in 0..50 {
            for twin in [&a, &b] {
                if i % 3 == 1 {
                    twin.same("BEGIN").await;
                    twin.same(PROBE).await;
                    twin.same("COMMIT").await;
                } else {
                    twin.same(PROBE).await;
                }
            }
            if i == 25 {
                // Settings change midway, and stick.
                a.same("SET TimeZone = 'Europe/Lisbon'").await;
                b.same("BEGIN; SET application_name = 'client-b-later'; COMMIT")
                    .await;
            }
        }
        assert_eq!(a.show("TimeZone").await, "Europe/Lisbon");
        assert_eq!(a.show("application_name").await, "client-a");
        assert_eq!(b.show("application_name").await, "client-b-later");
        assert_eq!(b.show("DateStyle").await, "German, DMY");

        // Both at once: pgdyno queues one behind the other.
        for _ in 0..10 {
            tokio::join!(a.same(PROBE), b.same(PROBE));
        }
    })
    .await
}

/// Clients that log in alike share one parameter list, and a backend that
/// matched it once is not compared again: a change by one of them must
/// still reach only that one, and a backend it changed must be set back
/// for the others.
#[tokio::test]
async fn clients_that_logged_in_alike_keep_their_own_changes() {
    within(120, async {
        let pgdyno = pgdyno().await;
        let mut twins = Vec::new();
        for name in ["A", "B", "C"] {
            twins.push(Twin::connect(&pgdyno, name, "-c DateStyle=SQL,DMY", "alike").await);
        }
        let [a, b, c] = &twins[..] else {
            unreachable!()
        };
        for twin in [a, b, c] {
            twin.same(PROBE).await;
        }
        a.same("SET TimeZone = 'Asia/Tokyo'").await;
        for _ in 0..5 {
            for twin in [b, a, c] {
                twin.same(PROBE).await;
            }
        }
        c.same("SET application_name = 'c-later'").await;
        b.same("BEGIN; SET DateStyle = 'German'; COMMIT").await;
        for _ in 0..5 {
            for twin in [a, b, c] {
                twin.same(PROBE).await;
            }
        }
        a.same("RESET TimeZone").await;
        for twin in [c, a, b] {
            twin.same(PROBE).await;
        }
        assert_eq!(a.show("application_name").await, "alike");
        assert_eq!(c.show("application_name").await, "c-later");
        assert_eq!(b.show("DateStyle").await, "German, DMY");
        assert_eq!(a.show("DateStyle").await, "SQL, DMY");
    })
    .await
}

/// Raw logins with these startup parameters, through pgdyno and straight
/// to PostgreSQL.
async fn login_twice(pgdyno: &Pgdyno, startup: &[(&str, &str)]) -> (RawConn, RawConn) {
    let mut via = RawConn::connect(pgdyno.port()).await;
    via.login_with(APP_USER, APP_PASSWORD, APP_DB, startup)
        .await
        .expect("login through pgdyno");
    let mut direct = RawConn::connect(Cluster::shared().port()).await;
    direct
        .login_with(APP_USER, APP_PASSWORD, APP_DB, startup)
        .await
        .expect("login to PostgreSQL");
    (via, direct)
}

/// Expected values of reported parameters, checked against every
/// ParameterStatus a client receives.
fn assert_own_parameters(msgs: &[Msg], own: &HashMap<&str, String>, when: &str) {
    for msg in msgs.iter().filter(|m| m.tag == b'S') {
        let (name, value) = parameter_status(msg);
        if let Some(expected) = own.get(name.as_str()) {
            assert_eq!(
                &value, expected,
                "{when}: ParameterStatus {name} is not the client's own"
            );
        }
    }
}

#[tokio::test]
async fn parameter_status_carries_the_clients_own_values() {
    within(60, async {
        let pgdyno = pgdyno().await;
        // Another client has the one backend set its own way first.
        let other = pgdyno.connect(APP_DB).await;
        other
            .batch_execute("SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'")
            .await
            .unwrap();

        // Settings both in `options` and as startup parameters.
        let startup = [
            (
                "options",
                "-c TimeZone=Pacific/Auckland -c IntervalStyle=sql_standard",
            ),
            ("DateStyle", "Postgres, MDY"),
            ("application_name", "raw-client"),
            ("client_encoding", "LATIN1"),
        ];
        let (mut via, mut direct) = login_twice(&pgdyno, &startup).await;

        let mut own = HashMap::new();
        for name in [
            "TimeZone",
            "DateStyle",
            "IntervalStyle",
            "application_name",
            "client_encoding",
            "standard_conforming_strings",
        ] {
            let expected = direct.login_parameter(name);
            assert_eq!(
                via.login_parameter(name),
                expected,
                "ParameterStatus {name} after login"
            );
            own.insert(name, expected.expect("PostgreSQL reports it"));
        }
        assert_eq!(own["TimeZone"], "Pacific/Auckland");

        // chr(233) is one byte in LATIN1, two in UTF8.
        let msgs = via.exchange(Batch::new().query("SELECT chr(233)")).await;
        assert_eq!(raw_rows(&msgs), [[Some(vec![0xe9])]], "é in LATIN1");
        assert_own_parameters(&msgs, &own, "first query");
        let row = other.query_one("SELECT chr(233)", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "é");

        // A SET is reported back, as PostgreSQL does.
        let sql = "SET TimeZone = 'Europe/Paris'";
        let msgs = via.exchange(Batch::new().query(sql)).await;
        let reported: Vec<_> = msgs
            .iter()
            .filter(|m| m.tag == b'S')
            .map(parameter_status)
            .collect();
        let direct_msgs = direct.exchange(Batch::new().query(sql)).await;
        let direct_reported: Vec<_> = direct_msgs
            .iter()
            .filter(|m| m.tag == b'S')
            .map(parameter_status)
            .collect();
        assert_eq!(reported, direct_reported, "ParameterStatus after {sql}");
        own.insert("TimeZone", "Europe/Paris".to_owned());

        for round in 0..5 {
            other.batch_execute("SELECT 1").await.unwrap();
            let msgs = via
                .exchange(
                    Batch::new()
                        .query("SHOW TimeZone")
                        .parse("", "SELECT chr(233), current_setting('IntervalStyle')")
                        .run("", &[])
                        .sync(),
                )
                .await;
            assert_own_parameters(&msgs, &own, &format!("round {round}"));
            assert_eq!(
                raw_rows(&msgs),
                [
                    vec![Some(b"Europe/Paris".to_vec())],
                    vec![Some(vec![0xe9]), Some(b"sql_standard".to_vec())]
                ],
                "round {round}"
            );
        }
    })
    .await
}

/// PostgreSQL reports settings in its own spelling (`ISO, DMY` for
/// `iso,dmy`); drivers read these reports (PgJDBC insists that DateStyle
/// starts with `ISO`), so pgdyno's must match.
#[tokio::test]
async fn login_parameter_status_is_spelled_as_postgresql_spells_it() {
    within(60, async {
        let pgdyno = pgdyno().await;
        let startup = [
            ("options", "-c DateStyle=iso,dmy -c TimeZone=europe/paris"),
            ("client_encoding", "latin1"),
        ];
        let (via, direct) = login_twice(&pgdyno, &startup).await;
        let mut differences = Vec::new();
        for name in ["DateStyle", "TimeZone", "client_encoding"] {
            let (got, expected) = (via.login_parameter(name), direct.login_parameter(name));
            if got != expected {
                differences.push(format!("{name}: pgdyno {got:?}, PostgreSQL {expected:?}"));
            }
        }
        assert!(differences.is_empty(), "{differences:#?}");
    })
    .await
}

/// As in PostgreSQL, a SET undone by ROLLBACK (or ROLLBACK TO SAVEPOINT, or
/// SET LOCAL at COMMIT) is undone for good. Between steps, another client
/// with other settings uses the one backend, so pgdyno must set the
/// client's values back from what it tracked, not from what the backend
/// still had.
#[tokio::test]
async fn settings_undone_by_rollback_stay_undone() {
    within(60, async {
        let pgdyno = pgdyno().await;
        let mut a = Twin::connect(&pgdyno, "A", "", "client-a").await;
        let b = Twin::connect(&pgdyno, "B", "-c TimeZone=America/Chicago", "client-b").await;
        a.same("SET TimeZone = 'Asia/Tokyo'").await;

        let steps: &[(&str, &str)] = &[
            (
                "BEGIN; SET TimeZone = 'Europe/Paris'; ROLLBACK",
                "Asia/Tokyo",
            ),
            (
                "BEGIN; SET LOCAL TimeZone = 'Europe/Paris'; COMMIT",
                "Asia/Tokyo",
            ),
            (
                "BEGIN; SET TimeZone = 'Europe/Paris'; SAVEPOINT s; \
                 SET TimeZone = 'Europe/Oslo'; ROLLBACK TO SAVEPOINT s; COMMIT",
                "Europe/Paris",
            ),
            ("BEGIN; SET TimeZone = 'Asia/Tokyo'; COMMIT", "Asia/Tokyo"),
        ];
        for (sql, expected) in steps {
            a.same(sql).await;
            b.same(PROBE).await;
            assert_eq!(&a.show("TimeZone").await, expected, "after {sql}");
            b.same(PROBE).await;
            a.same(PROBE).await;
        }

        // A transaction that fails after its SET, then rolls back.
        a.same("BEGIN").await;
        a.same("SET TimeZone = 'Europe/Paris'").await;
        a.same("SELECT 1 / 0").await;
        a.same("ROLLBACK").await;
        b.same(PROBE).await;
        assert_eq!(a.show("TimeZone").await, "Asia/Tokyo");

        // The same through the extended protocol, statement by statement.
        let tx = a.via.transaction().await.unwrap();
        tx.execute("SET TimeZone = 'Europe/Paris'", &[])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        b.same(PROBE).await;
        let row = a
            .via
            .query_one("SELECT current_setting('TimeZone')", &[])
            .await;
        assert_eq!(row.unwrap().get::<_, String>(0), "Asia/Tokyo");
    })
    .await
}

/// RESET goes back to the value the client started with, as PostgreSQL's
/// RESET does, not to whatever the shared backend started with.
#[tokio::test]
async fn reset_returns_to_the_clients_startup_value() {
    within(60, async {
        let pgdyno = pgdyno().await;
        let a = Twin::connect(
            &pgdyno,
            "A",
            "-c TimeZone=Asia/Tokyo -c IntervalStyle=iso_8601",
            "client-a",
        )
        .await;
        let b = Twin::connect(&pgdyno, "B", "-c TimeZone=America/Chicago", "client-b").await;
        let mut wrong = Vec::new();
        for reset in ["RESET TimeZone", "RESET ALL", "SET TimeZone TO DEFAULT"] {
            a.same("SET TimeZone = 'UTC'").await;
            b.same(PROBE).await;
            a.same(reset).await;
            b.same(PROBE).await;
            let via = simple(&a.via, "SHOW TimeZone").await;
            let direct = simple(&a.direct, "SHOW TimeZone").await;
            if via != direct {
                wrong.push(format!(
                    "after {reset}: pgdyno {via:?}, PostgreSQL {direct:?}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    })
    .await
}

/// The last value of `name` among these replies' ParameterStatus.
fn last_reported(msgs: &[Msg], name: &str) -> Option<String> {
    msgs.iter()
        .filter(|m| m.tag == b'S')
        .map(parameter_status)
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .last()
}

/// The same with the value in the startup packet itself, and DISCARD ALL
/// (which resets everything) too; what PostgreSQL reports about the reset
/// must also be what pgdyno reports.
#[tokio::test]
async fn reset_returns_to_the_startup_packet_value() {
    within(60, async {
        let pgdyno = pgdyno().await;
        let other = pgdyno.connect(APP_DB).await;
        let startup = [
            ("TimeZone", "Asia/Tokyo"),
            ("application_name", "raw-reset"),
        ];
        let (mut via, mut direct) = login_twice(&pgdyno, &startup).await;
        for reset in ["RESET TimeZone", "RESET ALL", "DISCARD ALL"] {
            for sql in ["SET TimeZone = 'UTC'", reset] {
                let got = via.exchange(Batch::new().query(sql)).await;
                let expected = direct.exchange(Batch::new().query(sql)).await;
                assert_eq!(tags(&got), tags(&expected), "{sql}: {:?}", errors(&got));
                assert_eq!(
                    last_reported(&got, "TimeZone"),
                    last_reported(&expected, "TimeZone"),
                    "ParameterStatus TimeZone after {sql}"
                );
            }
            other
                .batch_execute("SET TimeZone = 'America/Chicago'")
                .await
                .unwrap();
            let sql = "SHOW TimeZone; SHOW application_name";
            let got = via.exchange(Batch::new().query(sql)).await;
            let expected = direct.exchange(Batch::new().query(sql)).await;
            assert_eq!(rows(&got), rows(&expected), "after {reset}");
        }
    })
    .await
}

/// A driver acts on every ParameterStatus (PgJDBC closes the connection if
/// client_encoding is reported as anything but UTF8): the reports a RESET
/// brings must carry the client's values only, never, even for a moment,
/// the shared backend's own defaults.
#[tokio::test]
async fn reset_reports_no_value_but_the_clients_own() {
    within(60, async {
        let pgdyno = pgdyno().await;
        let startup = [
            ("TimeZone", "Asia/Tokyo"),
            ("application_name", "raw-reset"),
            ("client_encoding", "LATIN1"),
        ];
        let (mut via, mut direct) = login_twice(&pgdyno, &startup).await;
        for reset in ["RESET TimeZone", "RESET ALL", "DISCARD ALL"] {
            let sql = "SET TimeZone = 'UTC'";
            via.exchange(Batch::new().query(sql)).await;
            direct.exchange(Batch::new().query(sql)).await;
            let got = via.exchange(Batch::new().query(reset)).await;
            direct.exchange(Batch::new().query(reset)).await;
            for msg in got.iter().filter(|m| m.tag == b'S') {
                let (name, value) = parameter_status(msg);
                let show = format!("SELECT current_setting('{name}')");
                let own = direct.exchange(Batch::new().query(&show)).await;
                assert_eq!(
                    Some(value),
                    single_value(&own),
                    "{reset}: pgdyno reported {name} with a value not the client's"
                );
            }
        }
    })
    .await
}
