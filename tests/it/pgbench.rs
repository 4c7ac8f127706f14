//! pgbench through pgdyno: `pgbench -i` (DDL, COPY, VACUUM), then runs
//! with the simple, extended and prepared query protocols, each with more
//! clients than backends. Every transaction must succeed.

use crate::harness::*;

/// The number after `label` on its line of pgbench's report.
fn report_value<'a>(report: &'a str, label: &str) -> Option<&'a str> {
    report
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
}

async fn bench(db: &'static str, mode: &str) {
    let cluster = Cluster::shared();
    cluster.create_database(db).await;
    let pgdyno = Pgdyno::start(&["--upstream", &cluster.url(db), "--pool-size", "5"]).await;

    let init = pgbench(pgdyno.port(), db, &["-i", "-s", "1", "-q"]).await;
    assert!(
        init.status.success(),
        "pgbench -i failed:\n{}",
        output_text(&init)
    );

    // A thread per client: pgbench prepares each statement with a blocking
    // PQprepare, which stops all the clients of its thread until a backend
    // serves it; if those clients hold every backend mid-transaction
    // (tpcb's BEGIN ... END), nothing can move, with any pooler.
    let run = pgbench(
        pgdyno.port(),
        db,
        &["-M", mode, "-c", "8", "-j", "8", "-t", "100", "-n"],
    )
    .await;
    let report = output_text(&run);
    assert!(run.status.success(), "pgbench -M {mode} failed:\n{report}");
    assert_eq!(
        report_value(&report, "number of transactions actually processed:"),
        Some("800/800"),
        "{report}"
    );
    // pgbench before PostgreSQL 15 has no failure line; a clean exit and
    // 800/800 already say the same there.
    if report.contains("number of failed transactions:") {
        assert_eq!(
            report_value(&report, "number of failed transactions:"),
            Some("0"),
            "{report}"
        );
    }
    let client = pgdyno.connect(db).await;
    let row = client
        .query_typed_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        800,
        "every transaction left its history row"
    );
}

#[tokio::test]
async fn pgbench_simple_protocol() {
    within(180, bench("bench_simple", "simple")).await
}

#[tokio::test]
async fn pgbench_extended_protocol() {
    within(180, bench("bench_extended", "extended")).await
}

#[tokio::test]
async fn pgbench_prepared_statements() {
    within(180, bench("bench_prepared", "prepared")).await
}
