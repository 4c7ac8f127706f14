//! What a reload changes under pools that already exist: a database's new
//! upstream (new backends go there, the old ones close as they come back),
//! a user's new password (from the auth file, or proved by the client's
//! next SCRAM login), and `max_user_connections`.

use super::reload::{count_within, four_transactions};
use crate::harness::*;
use futures_util::future::join_all;
use std::path::Path;
use std::time::Duration;
use tokio_postgres::{Client, SimpleQueryMessage};

async fn reload(console: &Client) {
    console
        .simple_query("RELOAD")
        .await
        .unwrap_or_else(|e| panic!("RELOAD: {e} ({:?})", e.as_db_error()));
}

async fn server_port(client: &Client) -> String {
    client
        .query_typed_one("SELECT current_setting('port')", &[])
        .await
        .expect("SELECT current_setting('port')")
        .get(0)
}

/// The ports of the backends SHOW SERVERS lists.
async fn listed_ports(console: &Client) -> Vec<String> {
    let messages = console.simple_query("SHOW SERVERS").await.unwrap();
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get("port").map(str::to_owned),
            _ => None,
        })
        .collect()
}

fn write_config(path: &Path, url: &str, settings: &str) {
    let text =
        format!("{settings}\nadmin_users = \"{APP_USER}\"\n[databases]\n{APP_DB} = \"{url}\"\n");
    std::fs::write(path, text).expect("write config file");
}

/// A database pointed at another server by RELOAD: a transaction open
/// across the reload finishes on the old server, then that backend is
/// closed; everything after runs on the new server.
#[tokio::test]
async fn reload_points_a_database_at_its_new_upstream() {
    within(90, async {
        let (old, new) = (Cluster::shared(), Cluster::dedicated());
        let path = scratch_dir("repoint").join("pgdyno.toml");
        write_config(&path, &old.url(APP_DB), "default_pool_size = 2");
        let pgdyno = Pgdyno::start(&["--config", path.to_str().unwrap()]).await;
        let console = pgdyno.connect("pgbouncer").await;
        let (old_port, new_port) = (old.port().to_string(), new.port().to_string());

        let held = pgdyno.connect(APP_DB).await;
        held.batch_execute("BEGIN").await.unwrap();
        assert_eq!(server_port(&held).await, old_port);
        let other = pgdyno.connect(APP_DB).await;
        assert_eq!(server_port(&other).await, old_port);

        write_config(&path, &new.url(APP_DB), "default_pool_size = 2");
        reload(&console).await;
        assert_eq!(
            server_port(&other).await,
            new_port,
            "a transaction after the reload"
        );
        assert_eq!(
            server_port(&held).await,
            old_port,
            "the transaction open across the reload keeps its backend"
        );
        held.batch_execute("COMMIT").await.unwrap();
        assert_eq!(server_port(&held).await, new_port);
        assert_eq!(
            listed_ports(&console).await,
            [new_port],
            "SHOW SERVERS: the old server's backends are closed"
        );
    })
    .await
}

/// After a password change, backends opened later log in with the new
/// one: from the auth file on reload (a plain password), or from the
/// client's next login (SCRAM pass-through, where pgdyno holds only what a
/// login proved).
#[tokio::test]
async fn new_backends_use_the_new_password() {
    within(90, async {
        let cluster = Cluster::shared();
        let scram = |p: &str| postgres_protocol::password::scram_sha_256(p.as_bytes());
        let (scram_one, scram_two) = (scram("one"), scram("two"));
        cluster
            .admin()
            .await
            .batch_execute(&format!(
                "CREATE ROLE repoint_plain LOGIN PASSWORD 'one';
                 CREATE ROLE repoint_scram LOGIN PASSWORD '{scram_one}';
                 GRANT CONNECT ON DATABASE {APP_DB} TO repoint_plain, repoint_scram;"
            ))
            .await
            .unwrap();
        let userlist = scratch_dir("repoint").join("userlist.txt");
        let write_users = |plain: &str, scram: &str| {
            let text = format!(
                "\"repoint_plain\" \"{plain}\"\n\"repoint_scram\" \"{scram}\"\n\
                 \"{APP_USER}\" \"{APP_PASSWORD}\"\n"
            );
            std::fs::write(&userlist, text).unwrap();
        };
        write_users("one", &scram_one);
        // No user in the URL: each user's backends log in as that user.
        let url = format!("postgres://127.0.0.1:{}/{APP_DB}", cluster.port());
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &url,
            "--auth-file",
            userlist.to_str().unwrap(),
            "--admin-users",
            APP_USER,
            "--query-wait-timeout",
            "10",
        ])
        .await;
        let console = pgdyno.connect("pgbouncer").await;
        let login = |user: &'static str, password: &'static str| {
            let config = pgdyno.config_as(APP_DB, user, password);
            async move { connect(&config).await }
        };
        for user in ["repoint_plain", "repoint_scram"] {
            let client = login(user, "one").await.expect("login before the change");
            client.batch_execute("SELECT 1").await.unwrap();
        }

        cluster
            .admin()
            .await
            .batch_execute(&format!(
                "ALTER ROLE repoint_plain PASSWORD 'two';
                 ALTER ROLE repoint_scram PASSWORD '{scram_two}';"
            ))
            .await
            .unwrap();
        write_users("two", &scram_two);
        reload(&console).await;

        for user in ["repoint_plain", "repoint_scram"] {
            let err = login(user, "one").await.expect_err("old password refused");
            assert_eq!(
                sqlstate(&err),
                Some("28P01"),
                "{user} with the old password"
            );
            // Two transactions at once: at least one needs a new backend.
            let (a, b) = (
                login(user, "two").await.expect("login"),
                login(user, "two").await.expect("login"),
            );
            a.batch_execute("BEGIN; SELECT 1").await.unwrap();
            b.batch_execute("BEGIN; SELECT 1")
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{user}: a new backend after the change: {e} ({:?})",
                        e.as_db_error()
                    )
                });
            for c in [&a, &b] {
                c.batch_execute("COMMIT").await.unwrap();
            }
        }
    })
    .await
}

/// `max_user_connections` raised by RELOAD lets a pool that already exists
/// open more backends, up to the new limit and no further.
#[tokio::test]
async fn reload_changes_max_user_connections_of_existing_pools() {
    within(90, async {
        let path = scratch_dir("repoint").join("pgdyno.toml");
        let url = Cluster::shared().url(APP_DB);
        let settings = |max: usize| format!("default_pool_size = 4\nmax_user_connections = {max}");
        write_config(&path, &url, &settings(1));
        let pgdyno = Pgdyno::start(&["--config", path.to_str().unwrap()]).await;
        let console = pgdyno.connect("pgbouncer").await;
        let (started, clients, mut rx) = four_transactions(&pgdyno).await;
        assert_eq!(started, 1, "max_user_connections 1");

        write_config(&path, &url, &settings(3));
        reload(&console).await;
        assert_eq!(
            count_within(&mut rx, Duration::from_secs(3)).await,
            2,
            "max_user_connections raised to 3"
        );
        // The fourth gets a backend once another transaction ends (its own
        // COMMIT waits behind its BEGIN).
        let commits = join_all(clients.iter().map(|c| c.batch_execute("COMMIT"))).await;
        for result in commits {
            result.expect("COMMIT");
        }
        let wait = Duration::from_millis(700);
        assert_eq!(count_within(&mut rx, wait).await, 1, "the fourth");
    })
    .await
}
