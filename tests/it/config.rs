//! Configuration as a user meets it: flags beat `PGDYNO_*` env vars, which
//! beat the TOML file; DATABASE_URL as the default upstream; bad settings
//! stop pgdyno with a message naming the key; several databases from TOML,
//! each with its own pool; the `*` fallback database and
//! autodb_idle_timeout; the Unix socket and its mode; JSON logs; ignored
//! startup parameters.

use crate::harness::*;
use futures_util::future::join_all;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

fn write_config(name: &str, text: &str) -> PathBuf {
    let path = scratch_dir("config").join(name);
    std::fs::write(&path, text).expect("write config file");
    path
}

/// How many clients pgdyno admits before refusing one (up to 5).
async fn admitted(pgdyno: &Pgdyno) -> usize {
    let mut clients = Vec::new();
    while clients.len() < 5 {
        match connect(&pgdyno.config(APP_DB)).await {
            Ok(client) => {
                client
                    .query_typed_one("SELECT 1", &[])
                    .await
                    .expect("admitted client works");
                clients.push(client);
            }
            Err(_) => break,
        }
    }
    clients.len()
}

#[tokio::test]
async fn flags_beat_env_and_env_beats_file() {
    within(90, async {
        let file = write_config(
            "pgdyno.toml",
            &format!(
                "max_client_conn = 1\n[databases]\n{APP_DB} = \"{}\"\n",
                Cluster::shared().url(APP_DB)
            ),
        );
        let file = file.to_str().unwrap();
        let env = [("PGDYNO_MAX_CLIENT_CONN", "2")];

        let only_file = Pgdyno::start(&["--config", file]).await;
        assert_eq!(
            admitted(&only_file).await,
            1,
            "max_client_conn from the file"
        );
        let with_env = Pgdyno::launch(Launch {
            args: &["--config", file],
            env: &env,
        })
        .await;
        assert_eq!(
            admitted(&with_env).await,
            2,
            "the env var must beat the file"
        );
        let with_flag = Pgdyno::launch(Launch {
            args: &["--config", file, "--max-client-conn", "3"],
            env: &env,
        })
        .await;
        assert_eq!(
            admitted(&with_flag).await,
            3,
            "the flag must beat the env var"
        );
    })
    .await
}

#[tokio::test]
async fn database_url_is_the_upstream_by_default() {
    within(60, async {
        let url = Cluster::shared().url(APP_DB);
        let pgdyno = Pgdyno::launch(Launch {
            args: &[],
            env: &[("DATABASE_URL", &url)],
        })
        .await;
        let client = pgdyno.connect(APP_DB).await;
        let row = client
            .query_typed_one("SELECT current_database()::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), APP_DB);
    })
    .await
}

#[tokio::test]
async fn bad_settings_stop_pgdyno_naming_the_key() {
    within(90, async {
        let url = Cluster::shared().url(APP_DB);
        let listen = format!("127.0.0.1:{}", free_port());
        let bad_value_file = write_config(
            "bad-value.toml",
            &format!("query_wait_timeout = \"soon\"\n[databases]\n{APP_DB} = \"{url}\"\n"),
        );
        let unknown_key_file = write_config(
            "unknown-key.toml",
            &format!("pool_sise = 5\n[databases]\n{APP_DB} = \"{url}\"\n"),
        );
        let listen = listen.as_str();
        let bad_value_file = bad_value_file.to_str().unwrap();
        let unknown_key_file = unknown_key_file.to_str().unwrap();
        let cases: [(Launch, &[&str]); 6] = [
            (
                Launch {
                    args: &[
                        "--listen",
                        listen,
                        "--upstream",
                        &url,
                        "--pool-mode",
                        "bogus",
                    ],
                    env: &[],
                },
                &["pool_mode"],
            ),
            (
                Launch {
                    args: &["--listen", listen, "--upstream", &url],
                    env: &[("PGDYNO_DEFAULT_POOL_SIZE", "lots")],
                },
                &["default_pool_size"],
            ),
            (
                Launch {
                    args: &[
                        "--listen",
                        listen,
                        "--upstream",
                        &url,
                        "--query-wait-timeout",
                        "-3",
                    ],
                    env: &[],
                },
                &["query_wait_timeout"],
            ),
            (
                Launch {
                    args: &["--listen", listen, "--config", bad_value_file],
                    env: &[],
                },
                &["query_wait_timeout"],
            ),
            (
                Launch {
                    args: &["--listen", listen, "--config", unknown_key_file],
                    env: &[],
                },
                &["pool_sise"],
            ),
            (
                Launch {
                    args: &["--listen", listen],
                    env: &[],
                },
                &["upstream", "database_url"],
            ),
        ];
        for (launch, keys) in cases {
            let what = format!("pgdyno {:?} with env {:?}", launch.args, launch.env);
            let (status, output) = run_to_exit(launch).await;
            let status = status.unwrap_or_else(|| panic!("{what} kept running"));
            assert!(!status.success(), "{what} exited successfully");
            let said = output.to_lowercase().replace('-', "_");
            assert!(
                keys.iter().any(|key| said.contains(key)),
                "{what} did not name {keys:?}:\n{output}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn toml_databases_each_with_its_own_pool() {
    within(90, async {
        let cluster = Cluster::shared();
        cluster.create_database("toml_other").await;
        let file = write_config(
            "databases.toml",
            &format!(
                "pool_mode = \"transaction\"\ndefault_pool_size = 5\n[databases]\n\
                 {APP_DB} = \"{}\"\nother = {{ url = \"{}\", pool_size = 2 }}\n",
                cluster.url(APP_DB),
                cluster.url("toml_other"),
            ),
        );
        let pgdyno = Pgdyno::start(&["--config", file.to_str().unwrap()]).await;
        for (name, actual) in [(APP_DB, APP_DB), ("other", "toml_other")] {
            let client = pgdyno.connect(name).await;
            let row = client
                .query_typed_one("SELECT current_database()::text", &[])
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), actual, "database {name}");
        }
        let err = connect(&pgdyno.config("toml_other"))
            .await
            .expect_err("not a configured name");
        assert_eq!(sqlstate(&err), Some("3D000"), "{err}");

        let clients = join_all((0..6).map(|_| pgdyno.connect("other"))).await;
        let admin = cluster.admin().await;
        let work = join_all(clients.iter().map(|client| async move {
            let mut pids = Vec::new();
            for _ in 0..3 {
                let row = client
                    .query_typed_one("SELECT pg_backend_pid() FROM pg_sleep(0.1)", &[])
                    .await
                    .unwrap();
                pids.push(row.get::<_, i32>(0));
            }
            pids
        }));
        let watch = async {
            let mut most = 0;
            for _ in 0..20 {
                most = most.max(cluster.backends_on(&admin, "toml_other").await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            most
        };
        let (pids, most_seen) = tokio::join!(work, watch);
        let distinct: HashSet<i32> = pids.into_iter().flatten().collect();
        assert!(
            distinct.len() <= 2,
            "{} backends for pool_size 2",
            distinct.len()
        );
        assert!(
            (1..=2).contains(&most_seen),
            "PostgreSQL saw {most_seen} backends for pool_size 2"
        );
    })
    .await
}

/// The socket has `unix_socket_mode` and `unix_socket_group` (as root,
/// `nogroup` by name; otherwise this user's own group, by number) and
/// takes clients.
#[tokio::test]
async fn unix_socket_accepts_clients() {
    within(60, async {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = scratch_dir("sock");
        let mine = std::fs::metadata(&dir).unwrap();
        let (group, gid) = if mine.uid() == 0 {
            ("nogroup".to_owned(), 65534)
        } else {
            (mine.gid().to_string(), mine.gid())
        };
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--unix-socket-dir",
            dir.to_str().unwrap(),
            "--unix-socket-mode",
            "0770",
            "--unix-socket-group",
            &group,
        ])
        .await;
        let socket = pgdyno.wait_for_socket(&dir).await;
        assert!(socket.exists(), "no socket at {}", socket.display());
        let meta = std::fs::metadata(&socket).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o770, "unix_socket_mode");
        assert_eq!(meta.gid(), gid, "unix_socket_group");
        let config = pgdyno.unix_config_as(&dir, APP_DB, APP_USER, APP_PASSWORD);
        let client = connect(&config)
            .await
            .expect("connect over the Unix socket");
        let row = client.query_typed_one("SELECT 5", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 5);
    })
    .await
}

#[tokio::test]
async fn json_log_lines_are_json_objects() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--log-format",
            "json",
        ])
        .await;
        let client = pgdyno.connect(APP_DB).await;
        client.query_typed_one("SELECT 1", &[]).await.unwrap();
        drop(client);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = pgdyno.log();
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "pgdyno logged nothing");
        for line in lines {
            let line = line.trim();
            assert!(
                line.starts_with('{') && line.ends_with('}'),
                "not a JSON object: {line}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn ignored_startup_parameters_are_accepted() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--ignore-startup-parameters",
            "extra_float_digits,geqo",
        ])
        .await;
        for param in [("extra_float_digits", "3"), ("geqo", "on")] {
            let mut raw = RawConn::connect(pgdyno.port()).await;
            let code = raw
                .start(&[("user", APP_USER), ("database", APP_DB), param])
                .await
                .unwrap_or_else(|e| panic!("startup with {param:?} refused: {e:?}"));
            raw.authenticate(code, APP_USER, APP_PASSWORD)
                .await
                .unwrap_or_else(|e| panic!("login with {param:?}: {e:?}"));
            let msgs = raw.query("SELECT 1").await;
            assert!(msgs.iter().any(|m| m.tag == b'D'), "no DataRow: {msgs:?}");
        }
    })
    .await
}

/// `pgdyno --help | head` and the like: a reader that has gone away is no
/// error (no panic on the broken pipe).
#[test]
fn help_and_version_to_a_closed_pipe_exit_cleanly() {
    let bin = std::env::var_os("PGDYNO_IT_BIN").unwrap_or(env!("CARGO_BIN_EXE_pgdyno").into());
    for flag in ["--help", "--version"] {
        let (read, write) = std::io::pipe().expect("a pipe");
        drop(read);
        let out = std::process::Command::new(&bin)
            .arg(flag)
            .stdout(write)
            .output()
            .expect("run pgdyno");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{flag}: {:?}: {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{flag}: {stderr}");
    }
}

/// `[users]` gives one user's pools their own mode and size: `app` in
/// session mode with one backend holds it for its whole connection, so a
/// second client waits out query_wait_timeout; by default (transaction
/// mode, pool of 20) both are served at once.
#[tokio::test]
async fn users_table_sets_one_users_pool_mode_and_size() {
    within(60, async {
        let url = Cluster::shared().url(APP_DB);
        for (users, second_served) in [
            ("", true),
            (
                "[users]\napp = { pool_mode = \"session\", pool_size = 1 }\n",
                false,
            ),
        ] {
            let file = write_config(
                "users.toml",
                &format!("upstream = \"{url}\"\nquery_wait_timeout = 1\n{users}"),
            );
            let pgdyno = Pgdyno::start(&["--config", file.to_str().unwrap()]).await;
            let first = pgdyno.connect(APP_DB).await;
            first.simple_query("SELECT 1").await.unwrap();
            let second = pgdyno.connect(APP_DB).await;
            let result = second.simple_query("SELECT 1").await;
            assert_eq!(result.is_ok(), second_served, "{users:?}: {result:?}");
            if let Err(e) = result {
                assert_eq!(sqlstate(&e), Some("08P01"), "{e}");
            }
        }
    })
    .await
}

/// The backends PostgreSQL has open on database `db`, through pgdyno or not.
async fn sessions_on(db: &str) -> i64 {
    let admin = Cluster::shared().admin().await;
    Cluster::shared().backends_on(&admin, db).await
}

/// `[databases]` `*`: a database without an entry of its own is served on
/// the `*` entry's server, the server database being the name the client
/// asked for; an exact entry still wins. With autodb_idle_timeout, such a
/// pool no client holds any more is freed and its backends closed; by
/// default (an hour) it stays.
#[tokio::test]
async fn the_star_entry_serves_any_database_and_idle_ones_are_freed() {
    within(90, async {
        let cluster = Cluster::shared();
        cluster.create_database("star_one").await;
        cluster.create_database("star_two").await;
        let dir = scratch_dir("star");
        let star = format!(
            "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD}",
            cluster.port()
        );
        for (timeout, freed) in [(Some(1), true), (None, false)] {
            let path = dir.join(format!("star-{freed}.toml"));
            let setting = timeout.map_or(String::new(), |t| format!("autodb_idle_timeout = {t}\n"));
            std::fs::write(
                &path,
                format!(
                    "{setting}admin_users = \"{APP_USER}\"\n[databases]\n\
                     \"*\" = \"{star}\"\nstar_alias = \"{}\"\n",
                    cluster.url("star_two")
                ),
            )
            .unwrap();
            let pgdyno = Pgdyno::start(&["--config", path.to_str().unwrap()]).await;
            for (asked, served) in [("star_one", "star_one"), ("star_alias", "star_two")] {
                let client = pgdyno.connect(asked).await;
                let row = client
                    .query_typed_one("SELECT current_database()::text", &[])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, String>(0), served, "asked for {asked}");
            }
            // A name the server does not have: PostgreSQL's 3D000.
            let code = match connect(&pgdyno.config("star_missing")).await {
                Err(e) => sqlstate(&e).map(str::to_owned),
                Ok(c) => c
                    .simple_query("SELECT 1")
                    .await
                    .err()
                    .and_then(|e| sqlstate(&e).map(str::to_owned)),
            };
            assert_eq!(code.as_deref(), Some("3D000"));
            let console = pgdyno.connect("pgbouncer").await;
            let names: Vec<String> = console
                .simple_query("SHOW DATABASES")
                .await
                .unwrap()
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get("name").map(str::to_owned),
                    _ => None,
                })
                .collect();
            assert!(names.contains(&"star_one".to_owned()), "{names:?}");
            // Its one client gone, star_one's pool (and backend) is freed
            // after autodb_idle_timeout.
            assert_eq!(sessions_on("star_one").await, 1);
            tokio::time::sleep(Duration::from_millis(3500)).await;
            assert_eq!(
                sessions_on("star_one").await,
                if freed { 0 } else { 1 },
                "autodb_idle_timeout {timeout:?}"
            );
        }
    })
    .await
}
