//! Every SHOW command answers with PgBouncer's columns, in PgBouncer's
//! order (PgBouncer 1.25, COMPAT.md), so pgbouncer_exporter, dashboards and
//! people's habits carry over; psql reads the console too.

use super::*;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// SHOW CLIENTS / SHOW SERVERS in PgBouncer 1.24+ (`replication` since
/// 1.23, `id` since 1.24 with KILL_CLIENT).
const CONNECTION_COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

/// The twelve statistics of SHOW STATS, in PgBouncer's order (COMPAT.md).
const STATS: &[&str] = &[
    "server_assignment_count",
    "xact_count",
    "query_count",
    "received",
    "sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
    "client_login_count",
];

/// Every SHOW command and PgBouncer's columns for it, in order.
fn pgbouncer_columns() -> Vec<(&'static str, Vec<String>)> {
    let mut stats = vec!["database".to_owned()];
    stats.extend(STATS.iter().map(|s| format!("total_{s}")));
    stats.extend(STATS.iter().map(|s| match *s {
        "received" => "avg_recv".to_owned(),
        s => format!("avg_{s}"),
    }));
    let bytes = |s: &str| match s {
        "received" => "bytes_received".to_owned(),
        "sent" => "bytes_sent".to_owned(),
        s => s.to_owned(),
    };
    let mut totals = vec!["database".to_owned()];
    totals.extend(STATS.iter().map(|s| bytes(s)));
    // PgBouncer's stats.c names the averages like the totals, except the
    // three prepared-statement counts, which keep an `avg_` prefix.
    let mut averages = vec!["database".to_owned()];
    averages.extend(STATS.iter().map(|s| match *s {
        "client_parse_count" | "server_parse_count" | "bind_count" => format!("avg_{s}"),
        s => bytes(s),
    }));
    vec![
        (
            "SHOW POOLS",
            names(&[
                "database",
                "user",
                "cl_active",
                "cl_waiting",
                "cl_active_cancel_req",
                "cl_waiting_cancel_req",
                "sv_active",
                "sv_active_cancel",
                "sv_being_canceled",
                "sv_idle",
                "sv_used",
                "sv_tested",
                "sv_login",
                "maxwait",
                "maxwait_us",
                "pool_mode",
                "load_balance_hosts",
            ]),
        ),
        ("SHOW STATS", stats),
        ("SHOW STATS_TOTALS", totals),
        ("SHOW STATS_AVERAGES", averages),
        ("SHOW CLIENTS", names(CONNECTION_COLUMNS)),
        ("SHOW SERVERS", names(CONNECTION_COLUMNS)),
        (
            "SHOW DATABASES",
            names(&[
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_size",
                "min_pool_size",
                "reserve_pool_size",
                "server_lifetime",
                "pool_mode",
                "load_balance_hosts",
                "max_connections",
                "current_connections",
                "max_client_connections",
                "current_client_connections",
                "paused",
                "disabled",
            ]),
        ),
        (
            "SHOW CONFIG",
            names(&["key", "value", "default", "changeable"]),
        ),
        ("SHOW LISTS", names(&["list", "items"])),
        ("SHOW TOTALS", names(&["name", "value"])),
        ("SHOW VERSION", names(&["version"])),
        (
            "SHOW USERS",
            names(&[
                "name",
                "pool_size",
                "reserve_pool_size",
                "pool_mode",
                "max_user_connections",
                "current_connections",
                "max_user_client_connections",
                "current_client_connections",
            ]),
        ),
    ]
}

#[tokio::test]
async fn every_show_has_pgbouncers_columns_in_order() {
    within(60, async {
        let pgdyno = pgdyno(&[]).await;
        // A client and a backend, so that every list has a row.
        let app = pgdyno.connect(APP_DB).await;
        simple(&app, "SELECT 1").await;
        let mut wrong = Vec::new();
        for db in ["pgbouncer", "pgdyno"] {
            let console = console_on(&pgdyno, db).await;
            for (sql, expected) in pgbouncer_columns() {
                let table = show(&console, sql).await;
                if table.columns != expected {
                    let missing: Vec<_> = expected
                        .iter()
                        .filter(|c| !table.columns.contains(c))
                        .collect();
                    let extra: Vec<_> = table
                        .columns
                        .iter()
                        .filter(|c| !expected.contains(c))
                        .collect();
                    wrong.push(format!(
                        "{sql} (on {db}): missing {missing:?}, unexpected {extra:?}\n  \
                         got      {:?}\n  expected {expected:?}",
                        table.columns
                    ));
                }
                assert!(!table.rows.is_empty(), "{sql} on {db} has no rows");
            }
            // PgBouncer answers SHOW HELP with a NOTICE and no columns;
            // pgdyno with rows. Either way it names the commands.
            let table = show(&console, "SHOW HELP").await;
            let all: String = table
                .rows
                .iter()
                .flat_map(|r| r.values().flatten().cloned())
                .collect::<Vec<_>>()
                .join("\n");
            for command in ["SHOW", "PAUSE", "RESUME", "RECONNECT", "KILL", "SHUTDOWN"] {
                assert!(all.contains(command), "SHOW HELP lacks {command}: {all}");
            }
            // Lower case and a trailing semicolon are the same command.
            let version = show(&console, "show version;").await;
            let v = version.rows[0]["version"].clone().unwrap_or_default();
            assert!(v.starts_with("PgBouncer "), "SHOW VERSION: {v}");
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    })
    .await
}

#[tokio::test]
async fn psql_reads_the_console() {
    within(60, async {
        let pgdyno = pgdyno(&[]).await;
        let app = pgdyno.connect(APP_DB).await;
        simple(&app, "SELECT 1").await;
        let expected: BTreeMap<_, _> = pgbouncer_columns().into_iter().collect();
        for sql in ["SHOW POOLS", "SHOW STATS", "SHOW DATABASES", "SHOW LISTS"] {
            let out = psql(pgdyno.port(), "pgbouncer", &["--csv", "-c", sql]).await;
            let text = output_text(&out);
            assert!(out.status.success(), "psql {sql}:\n{text}");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let header: Vec<String> = stdout
                .lines()
                .next()
                .unwrap_or_default()
                .split(',')
                .map(str::to_owned)
                .collect();
            assert_eq!(&header, &expected[sql], "psql {sql} header:\n{text}");
            assert!(stdout.lines().count() >= 2, "psql {sql}: no rows:\n{text}");
        }
        let out = psql(pgdyno.port(), "pgbouncer", &["-At", "-c", "SHOW VERSION"]).await;
        let text = output_text(&out);
        assert!(out.status.success(), "psql SHOW VERSION:\n{text}");
        assert!(text.starts_with("PgBouncer "), "psql SHOW VERSION: {text}");
        let out = psql(pgdyno.port(), "pgbouncer", &["-c", "SHOW HELP"]).await;
        assert!(
            out.status.success(),
            "psql SHOW HELP:\n{}",
            output_text(&out)
        );
        let out = psql(pgdyno.port(), "pgbouncer", &["-c", "FROBNICATE"]).await;
        assert!(
            !out.status.success(),
            "an unknown command must fail in psql"
        );
    })
    .await
}
