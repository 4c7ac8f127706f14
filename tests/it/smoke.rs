//! The harness against PostgreSQL alone, no pgdyno: if these fail, every
//! other failure is suspect.

use crate::harness::*;

#[tokio::test]
async fn shared_cluster_serves_app_on_appdb() {
    within(60, async {
        let cluster = Cluster::shared();
        let app = cluster.direct(APP_DB).await;
        let row = app
            .query_one("SELECT current_user::text, current_database()::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), APP_USER);
        assert_eq!(row.get::<_, String>(1), APP_DB);
        app.batch_execute(
            "CREATE TABLE smoke_t (id int); INSERT INTO smoke_t VALUES (1), (2); DROP TABLE smoke_t",
        )
        .await
        .expect("app can create tables in appdb");

        // PostgreSQL never runs as root; as root, the harness runs it as nobody.
        let admin = cluster.admin().await;
        let dir: String = admin
            .query_one("SELECT current_setting('data_directory')", &[])
            .await
            .unwrap()
            .get(0);
        assert!(dir.contains("pgdyno-it-"), "data directory {dir}");
    })
    .await
}

#[tokio::test]
async fn raw_login_speaks_scram_to_postgresql() {
    within(60, async {
        let cluster = Cluster::shared();
        let mut raw = RawConn::connect(cluster.port()).await;
        let code = raw
            .start(&[("user", APP_USER), ("database", APP_DB)])
            .await
            .expect("PostgreSQL accepts the startup packet");
        assert_eq!(code, AUTH_SASL);
        raw.authenticate(code, APP_USER, APP_PASSWORD)
            .await
            .expect("SCRAM login");
        let msgs = raw.query("SELECT 41 + 1").await;
        assert!(msgs.iter().any(|m| m.tag == b'D'), "no DataRow: {msgs:?}");

        let mut wrong = RawConn::connect(cluster.port()).await;
        let err = wrong.login(APP_USER, "wrong", APP_DB).await.unwrap_err();
        assert_eq!(err.code, "28P01");
        assert!(assert_refused(&wrong.until_closed(5).await, "a failed login").is_none());
    })
    .await
}

#[tokio::test]
async fn dedicated_cluster_restarts_on_the_same_port() {
    within(120, async {
        let cluster = Cluster::dedicated();
        let port = cluster.port();
        cluster
            .direct(APP_DB)
            .await
            .simple_query("SELECT 1")
            .await
            .unwrap();
        cluster.stop();
        assert!(
            tokio_postgres::connect(&cluster.url(APP_DB), tokio_postgres::NoTls)
                .await
                .is_err(),
            "PostgreSQL still answers after stop"
        );
        cluster.start();
        assert_eq!(cluster.port(), port);
        cluster
            .direct(APP_DB)
            .await
            .simple_query("SELECT 1")
            .await
            .unwrap();
    })
    .await
}
