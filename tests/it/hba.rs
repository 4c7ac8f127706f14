//! `auth_type = hba`: the login method per connection from `auth_hba_file`
//! (pg_hba.conf's format): peer on the Unix socket, password methods and
//! reject by user and address over TCP, PostgreSQL's refusals for a rejected or
//! unmatched client, the file read again on RELOAD, and a file pgdyno
//! cannot honour stopping it at startup. (`cert` on hostssl records is
//! with the TLS tests, `tls::client`.)

use crate::harness::*;

/// The operating-system user this test runs as (what `peer` sees).
fn os_user() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// pgdyno on the shared cluster under `auth_type = hba` with the file
/// `hba`, and `extra` flags.
async fn hba_pgdyno(hba: &std::path::Path, extra: &[&str]) -> Pgdyno {
    let url = Cluster::shared().url(APP_DB);
    let mut args = vec![
        "--upstream",
        &url,
        "--auth-type",
        "hba",
        "--auth-hba-file",
        hba.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Pgdyno::start(&args).await
}

/// SQLSTATE and message of the refusal of `user` with `password`.
async fn refusal(config: &tokio_postgres::Config) -> (String, String) {
    let err = connect(config).await.expect_err("login must be refused");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("no ErrorResponse: {err}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

async fn select_one(config: &tokio_postgres::Config, what: &str) {
    let client = connect(config)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e} ({:?})", e.as_db_error()));
    client
        .query_typed_one("SELECT 1", &[])
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// The authentication request pgdyno answers `user`'s startup with.
async fn requested_method(pgdyno: &Pgdyno, user: &str) -> Option<i32> {
    let mut raw = RawConn::connect(pgdyno.port()).await;
    raw.start(&[("user", user), ("database", APP_DB)])
        .await
        .ok()
}

#[tokio::test]
async fn each_connection_logs_in_as_its_first_matching_record_says() {
    within(90, async {
        let dir = scratch_dir("hba");
        let (hba, userlist) = (dir.join("hba.conf"), dir.join("userlist.txt"));
        std::fs::write(
            &userlist,
            format!("\"{APP_USER}\" \"{APP_PASSWORD}\"\n\"carl\" \"carl-secret\"\n"),
        )
        .unwrap();
        let me = os_user();
        std::fs::write(
            &hba,
            format!(
                "# peer for whoever runs the test, on the socket only\n\
                 local   all  all                 peer\n\
                 hostssl all  all   127.0.0.1/32  trust   # never a plaintext client\n\
                 host    all  carl  127.0.0.1/32  password\n\
                 host    all  mallory  all        reject\n\
                 host    {APP_DB},pgbouncer  @admins  127.0.0.0 255.0.0.0  scram-sha-256\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("admins"), format!("{APP_USER}, someone_else\n")).unwrap();
        let pgdyno = hba_pgdyno(
            &hba,
            &[
            "--auth-file",
            userlist.to_str().unwrap(),
            "--unix-socket-dir",
            dir.to_str().unwrap(),
            "--admin-users",
            APP_USER,
        ],
        )
        .await;

        // TCP: SCRAM for app (from @admins), cleartext for carl.
        assert_eq!(requested_method(&pgdyno, APP_USER).await, Some(AUTH_SASL));
        assert_eq!(requested_method(&pgdyno, "carl").await, Some(AUTH_CLEARTEXT));
        select_one(&pgdyno.config(APP_DB), "app over TCP").await;
        select_one(&pgdyno.config_as(APP_DB, "carl", "carl-secret"), "carl").await;
        // The hostssl trust record is not for plaintext: a wrong password
        // is still wrong.
        let (code, _) = refusal(&pgdyno.config_as(APP_DB, APP_USER, "wrong")).await;
        assert_eq!(code, "28P01");
        let (code, message) = refusal(&pgdyno.config_as(APP_DB, "mallory", "x")).await;
        assert_eq!(code, "28000", "{message}");
        assert!(message.contains("pg_hba.conf rejects connection for host \"127.0.0.1\", user \"mallory\""), "{message}");
        let (code, message) = refusal(&pgdyno.config_as(APP_DB, "zed", "x")).await;
        assert_eq!(code, "28000", "{message}");
        assert!(
            message.contains("no pg_hba.conf entry for host \"127.0.0.1\", user \"zed\", database \"appdb\", no encryption"),
            "{message}"
        );

        // The Unix socket: peer lets the test's own user in with no
        // password, and nobody else.
        pgdyno.wait_for_socket(&dir).await;
        let local = pgdyno.unix_config_as(&dir, APP_DB, &me, "");
        select_one(&local, "peer as the test's own user").await;
        let other = pgdyno.unix_config_as(&dir, APP_DB, APP_USER, APP_PASSWORD);
        let (code, message) = refusal(&other).await;
        assert_eq!(code, "28000", "{message}");
        assert!(message.contains("Peer authentication failed for user \"app\""), "{message}");

        // RELOAD reads the file again: zed is let in by a new record.
        let text = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("host all zed 127.0.0.1/32 trust\n{text}")).unwrap();
        let console = pgdyno.connect("pgbouncer").await;
        console.simple_query("RELOAD").await.expect("RELOAD");
        select_one(&pgdyno.config_as(APP_DB, "zed", ""), "zed after RELOAD").await;
    })
    .await
}

/// A file pgdyno cannot honour as PostgreSQL would stops it, naming the
/// file and line; so does auth_type hba without a file.
#[tokio::test]
async fn an_hba_file_pgdyno_cannot_honour_stops_it_at_startup() {
    within(60, async {
        let dir = scratch_dir("hba-bad");
        let hba = dir.join("hba.conf");
        std::fs::write(&hba, "local all all peer\nhost all all all ident\n").unwrap();
        let mapped = dir.join("mapped.conf");
        std::fs::write(&mapped, "local all all peer map=nomap\n").unwrap();
        let url = Cluster::shared().url(APP_DB);
        let hba = hba.to_str().unwrap();
        let mapped = mapped.to_str().unwrap();
        for (args, want) in [
            (
                vec![
                    "--upstream",
                    &url,
                    "--auth-type",
                    "hba",
                    "--auth-hba-file",
                    hba,
                ],
                format!("{hba}:2: authentication method \"ident\" is not supported"),
            ),
            (
                vec!["--upstream", &url, "--auth-type", "hba"],
                "hba needs auth_hba_file".to_owned(),
            ),
            (
                vec![
                    "--upstream",
                    &url,
                    "--auth-type",
                    "hba",
                    "--auth-hba-file",
                    mapped,
                ],
                "map \"nomap\" is not in auth_ident_file (which is not set)".to_owned(),
            ),
        ] {
            let (status, log) = run_to_exit(Launch {
                args: &args,
                env: &[],
            })
            .await;
            assert!(status.is_some_and(|s| !s.success()), "{args:?}: {log}");
            assert!(log.contains(&want), "{args:?}: {log}");
        }
    })
    .await
}

/// `peer map=ops`: the test's operating-system user may log in over the
/// socket as the users `auth_ident_file`'s map `ops` gives it, and as no
/// other; RELOAD reads the map again.
#[tokio::test]
async fn a_peer_map_lets_the_os_user_in_as_the_users_it_names() {
    within(60, async {
        let dir = scratch_dir("hba-map");
        let (hba, ident) = (dir.join("hba.conf"), dir.join("ident.conf"));
        std::fs::write(&hba, "local all all peer map=ops\n").unwrap();
        let me = os_user();
        std::fs::write(&ident, format!("# map system user\nops {me} {APP_USER}\n")).unwrap();
        let pgdyno = hba_pgdyno(
            &hba,
            &[
                "--auth-ident-file",
                ident.to_str().unwrap(),
                "--unix-socket-dir",
                dir.to_str().unwrap(),
            ],
        )
        .await;
        pgdyno.wait_for_socket(&dir).await;
        let as_app = pgdyno.unix_config_as(&dir, APP_DB, APP_USER, "");
        select_one(&as_app, "the OS user as app, by the map").await;
        for user in [me.as_str(), "carl"] {
            let (code, message) = refusal(&pgdyno.unix_config_as(&dir, APP_DB, user, "")).await;
            assert_eq!(code, "28000", "{user}: {message}");
            assert!(message.contains("Peer authentication failed"), "{message}");
        }

        std::fs::write(&ident, format!("ops {me} someone_else\n")).unwrap();
        pgdyno.signal("HUP");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while connect(&as_app).await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the map was not read again"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}
