//! The console's commands for maintenance and failover: DISABLE and ENABLE
//! a database for new clients, WAIT_CLOSE after RECONNECT, KILL_CLIENT one
//! client by its SHOW CLIENTS id, SHOW STATE, and SET of a setting.

use super::*;

/// An integer column of appdb's row in SHOW DATABASES.
async fn appdb_column(console: &Client, column: &str) -> i64 {
    let t = show(console, "SHOW DATABASES").await;
    let row = t
        .rows
        .iter()
        .find(|r| r["name"].as_deref() == Some(APP_DB))
        .expect("appdb in SHOW DATABASES");
    t.int(row, column)
}

#[tokio::test]
async fn disable_refuses_new_clients_and_enable_lets_them_in() {
    within(60, async {
        let pgdyno = pgdyno(&[]).await;
        let console = console(&pgdyno).await;
        let before = pgdyno.connect(APP_DB).await;
        assert_eq!(appdb_column(&console, "disabled").await, 0);

        simple(&console, &format!("DISABLE {APP_DB}")).await;
        let Err(err) = connect(&pgdyno.config(APP_DB)).await else {
            panic!("a new client of a disabled database was let in");
        };
        let db_err = err.as_db_error().expect("an ErrorResponse");
        assert_eq!(db_err.code().code(), "08P01");
        assert!(
            db_err.message().contains("does not allow connections"),
            "{}",
            db_err.message()
        );
        simple(&before, "SELECT 1").await;
        assert_eq!(appdb_column(&console, "disabled").await, 1);

        simple(&console, &format!("ENABLE {APP_DB}")).await;
        simple(&pgdyno.connect(APP_DB).await, "SELECT 1").await;
        assert_eq!(appdb_column(&console, "disabled").await, 0);

        for bad in ["DISABLE", "DISABLE nosuchdb", "ENABLE nosuchdb"] {
            let err = console.simple_query(bad).await.expect_err(bad);
            assert!(err.as_db_error().is_some(), "{bad}: {err}");
        }
    })
    .await
}

#[tokio::test]
async fn wait_close_returns_once_backends_older_than_reconnect_are_gone() {
    within(60, async {
        let pgdyno = pgdyno(&[]).await;
        let console = console(&pgdyno).await;
        let client = pgdyno.connect(APP_DB).await;
        simple(&console, "WAIT_CLOSE").await;

        simple(&client, "BEGIN").await;
        let old = backend_pid(&client).await;
        simple(&console, &format!("RECONNECT {APP_DB}")).await;
        let wait = console.simple_query("WAIT_CLOSE");
        tokio::pin!(wait);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut wait)
                .await
                .is_err(),
            "WAIT_CLOSE returned while a backend from before RECONNECT is lent"
        );
        simple(&client, "COMMIT").await;
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("WAIT_CLOSE returns once the old backend is closed")
            .expect("WAIT_CLOSE");
        assert_ne!(backend_pid(&client).await, old);
    })
    .await
}

#[tokio::test]
async fn kill_client_ends_only_that_client() {
    within(60, async {
        let pgdyno = pgdyno(&[]).await;
        let console = console(&pgdyno).await;
        let mut config = pgdyno.config(APP_DB);
        config.application_name("victim");
        let victim = connect(&config).await.unwrap();
        let other = pgdyno.connect(APP_DB).await;
        simple(&victim, "SELECT 1").await;

        let clients = show(&console, "SHOW CLIENTS").await;
        let id = clients
            .rows
            .iter()
            .find(|r| r["application_name"].as_deref() == Some("victim"))
            .map(|r| clients.int(r, "id"))
            .expect("the victim in SHOW CLIENTS");
        simple(&console, &format!("KILL_CLIENT {id}")).await;
        let killed = tokio::time::timeout(Duration::from_secs(5), victim.simple_query("SELECT 1"))
            .await
            .expect("the killed client's query neither failed nor ran within 5 s");
        assert!(killed.is_err(), "the victim still works after KILL_CLIENT");
        simple(&other, "SELECT 1").await;

        for bad in ["KILL_CLIENT", "KILL_CLIENT x", "KILL_CLIENT 999999"] {
            let err = console.simple_query(bad).await.expect_err(bad);
            assert!(err.as_db_error().is_some(), "{bad}: {err}");
        }
    })
    .await
}

#[tokio::test]
async fn show_state_follows_pause_and_resume() {
    within(60, async {
        let pgdyno = pgdyno(&[]).await;
        let console = console(&pgdyno).await;
        simple(&pgdyno.connect(APP_DB).await, "SELECT 1").await;
        let state = |t: Table| -> Vec<(String, String)> {
            t.rows
                .iter()
                .map(|r| (r["key"].clone().unwrap(), r["value"].clone().unwrap()))
                .collect()
        };
        let expect = |active: &str, paused: &str| {
            vec![
                ("active".to_owned(), active.to_owned()),
                ("paused".to_owned(), paused.to_owned()),
                ("suspended".to_owned(), "no".to_owned()),
            ]
        };
        assert_eq!(
            state(show(&console, "SHOW STATE").await),
            expect("yes", "no")
        );
        simple(&console, "PAUSE").await;
        assert_eq!(
            state(show(&console, "SHOW STATE").await),
            expect("no", "yes")
        );
        simple(&console, "RESUME").await;
        assert_eq!(
            state(show(&console, "SHOW STATE").await),
            expect("yes", "no")
        );
    })
    .await
}

/// The value of `key` in SHOW CONFIG.
async fn config_value(console: &Client, key: &str) -> String {
    let t = show(console, "SHOW CONFIG").await;
    let row = t
        .rows
        .iter()
        .find(|r| r["key"].as_deref() == Some(key))
        .unwrap_or_else(|| panic!("{key} in SHOW CONFIG"));
    t.cell(row, "value").unwrap_or_default().to_owned()
}

#[tokio::test]
async fn set_changes_a_setting_live_and_keeps_it_through_reload() {
    within(60, async {
        let pgdyno = pgdyno(&["--pool-size", "5"]).await;
        let console = console(&pgdyno).await;
        simple(&pgdyno.connect(APP_DB).await, "SELECT 1").await;
        assert_eq!(appdb_column(&console, "pool_size").await, 5);

        simple(&console, "SET default_pool_size = 3").await;
        assert_eq!(config_value(&console, "default_pool_size").await, "3");
        assert_eq!(appdb_column(&console, "pool_size").await, 3);
        simple(&console, "SET server_check_query TO 'SELECT 2'").await;
        assert_eq!(
            config_value(&console, "server_check_query").await,
            "SELECT 2"
        );

        for bad in [
            "SET default_pool_size = many",
            "SET no_such_thing = 1",
            "SET x",
        ] {
            let err = console.simple_query(bad).await.expect_err(bad);
            assert!(err.as_db_error().is_some(), "{bad}: {err}");
        }
        assert_eq!(config_value(&console, "default_pool_size").await, "3");

        simple(&console, "RELOAD").await;
        assert_eq!(config_value(&console, "default_pool_size").await, "3");

        // A new connect_query reaches the pool's new backends.
        simple(
            &console,
            "SET connect_query = 'SET pgdyno.marker = ''set'''",
        )
        .await;
        simple(&console, "RECONNECT").await;
        let client = pgdyno.connect(APP_DB).await;
        let row = client
            .query_one("SELECT current_setting('pgdyno.marker', true)", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("set"));
    })
    .await
}
