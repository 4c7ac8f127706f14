//! Logging in to pgdyno: the method it asks for under each auth_type, that
//! a wrong password and an unknown user look alike (28P01), an unknown
//! database (3D000), users from an auth_file with plain, md5 and SCRAM
//! secrets, and users looked up with auth_query. The auth_file users also
//! exist in PostgreSQL with the same secrets, so pgdyno may log in to
//! PostgreSQL as them.

use crate::harness::*;

async fn pgdyno(extra: &[&str]) -> Pgdyno {
    let url = Cluster::shared().url(APP_DB);
    let mut args = vec!["--upstream", &url];
    args.extend_from_slice(extra);
    Pgdyno::start(&args).await
}

async fn login_error(pgdyno: &Pgdyno, db: &str, user: &str, password: &str) -> (String, String) {
    let err = connect(&pgdyno.config_as(db, user, password))
        .await
        .err()
        .unwrap_or_else(|| panic!("{user}/{password} on {db} must be refused"));
    let db_err = err
        .as_db_error()
        .unwrap_or_else(|| panic!("no ErrorResponse for {user} on {db}: {err}"));
    (db_err.code().code().to_owned(), db_err.message().to_owned())
}

async fn select_one_as(pgdyno: &Pgdyno, user: &str, password: &str) {
    let client = connect(&pgdyno.config_as(APP_DB, user, password))
        .await
        .unwrap_or_else(|e| panic!("{user} cannot log in: {e} ({:?})", e.as_db_error()));
    let row = client
        .query_typed_one("SELECT 1", &[])
        .await
        .unwrap_or_else(|e| panic!("{user}'s query: {e} ({:?})", e.as_db_error()));
    assert_eq!(row.get::<_, i32>(0), 1);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused_alike() {
    within(60, async {
        let pgdyno = pgdyno(&[]).await;
        let (code, wrong_password) = login_error(&pgdyno, APP_DB, APP_USER, "not-the-secret").await;
        assert_eq!(code, "28P01", "{wrong_password}");
        let (code, unknown_user) = login_error(&pgdyno, APP_DB, "nosuchuser", "whatever").await;
        assert_eq!(code, "28P01", "{unknown_user}");
        // Nothing tells an attacker which user names exist.
        assert_eq!(
            wrong_password.replace(APP_USER, "USER"),
            unknown_user.replace("nosuchuser", "USER")
        );
        select_one_as(&pgdyno, APP_USER, APP_PASSWORD).await;
    })
    .await
}

#[tokio::test]
async fn unknown_database_is_3d000() {
    within(60, async {
        let pgdyno = pgdyno(&[]).await;
        let (code, message) = login_error(&pgdyno, "nosuchdb", APP_USER, APP_PASSWORD).await;
        assert_eq!(code, "3D000", "{message}");
        select_one_as(&pgdyno, APP_USER, APP_PASSWORD).await;
    })
    .await
}

/// The authentication request pgdyno answers a startup packet with.
async fn requested_method(pgdyno: &Pgdyno) -> i32 {
    let mut raw = RawConn::connect(pgdyno.port()).await;
    raw.start(&[("user", APP_USER), ("database", APP_DB)])
        .await
        .expect("startup accepted")
}

#[tokio::test]
async fn auth_type_picks_the_login_method() {
    within(90, async {
        for (auth_type, method) in [
            (None, AUTH_SASL),
            (Some("scram-sha-256"), AUTH_SASL),
            (Some("md5"), AUTH_MD5),
            (Some("plain"), AUTH_CLEARTEXT),
        ] {
            let pgdyno = match auth_type {
                Some(t) => pgdyno(&["--auth-type", t]).await,
                None => pgdyno(&[]).await,
            };
            assert_eq!(
                requested_method(&pgdyno).await,
                method,
                "auth_type {auth_type:?}"
            );
            // The whole login, by hand and by tokio-postgres.
            let mut raw = RawConn::connect(pgdyno.port()).await;
            raw.login(APP_USER, APP_PASSWORD, APP_DB)
                .await
                .unwrap_or_else(|e| panic!("raw login under auth_type {auth_type:?}: {e:?}"));
            select_one_as(&pgdyno, APP_USER, APP_PASSWORD).await;
            let (code, _) = login_error(&pgdyno, APP_DB, APP_USER, "wrong").await;
            assert_eq!(
                code, "28P01",
                "wrong password under auth_type {auth_type:?}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn trust_asks_for_no_password() {
    within(60, async {
        let pgdyno = pgdyno(&["--auth-type", "trust"]).await;
        assert_eq!(requested_method(&pgdyno).await, AUTH_OK);
        let mut config = pgdyno.config(APP_DB);
        config.password("");
        let client = connect(&config)
            .await
            .expect("trust login without a password");
        client.query_typed_one("SELECT 1", &[]).await.unwrap();
    })
    .await
}

/// Creates the auth_file users in PostgreSQL too: `alice_*` with a SCRAM
/// password, `carol` with exactly the SCRAM secret pgdyno gets, and
/// MD5_ROLE with an md5 password (pg_hba lets it log in with md5).
async fn create_roles(scram_secret: &str) {
    let admin = Cluster::shared().admin().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE alice_scram LOGIN PASSWORD 'alice-secret';
             CREATE ROLE alice_md5 LOGIN PASSWORD 'alice-secret';
             CREATE ROLE carol LOGIN PASSWORD '{scram_secret}';
             SET password_encryption = 'md5';
             CREATE ROLE {MD5_ROLE} LOGIN PASSWORD 'bob-secret';"
        ))
        .await
        .expect("create auth_file roles");
}

#[tokio::test]
async fn auth_file_users_with_plain_md5_and_scram_secrets() {
    within(90, async {
        let scram_secret = postgres_protocol::password::scram_sha_256(b"carol-secret");
        create_roles(&scram_secret).await;
        let md5_secret = postgres_protocol::password::md5(b"bob-secret", MD5_ROLE);
        assert!(md5_secret.starts_with("md5") && md5_secret.len() == 35);
        let dir = scratch_dir("authfile");
        let userlist = dir.join("userlist.txt");
        std::fs::write(
            &userlist,
            format!(
                "\"alice_scram\" \"alice-secret\"\n\"alice_md5\" \"alice-secret\"\n\
                 \"carol\" \"{scram_secret}\"\n\"{MD5_ROLE}\" \"{md5_secret}\"\n"
            ),
        )
        .unwrap();
        let userlist = userlist.to_str().unwrap();

        // SCRAM with clients: plain and SCRAM secrets can serve it.
        let scram = pgdyno(&["--auth-file", userlist]).await;
        select_one_as(&scram, "alice_scram", "alice-secret").await;
        select_one_as(&scram, "carol", "carol-secret").await;
        let (code, _) = login_error(&scram, APP_DB, "carol", "alice-secret").await;
        assert_eq!(code, "28P01");
        let (code, _) = login_error(&scram, APP_DB, "alice_scram", "carol-secret").await;
        assert_eq!(code, "28P01");

        // md5 with clients: plain and md5 secrets can serve it.
        let md5 = pgdyno(&["--auth-file", userlist, "--auth-type", "md5"]).await;
        assert_eq!(requested_method(&md5).await, AUTH_MD5);
        select_one_as(&md5, "alice_md5", "alice-secret").await;
        select_one_as(&md5, MD5_ROLE, "bob-secret").await;
        let (code, _) = login_error(&md5, APP_DB, MD5_ROLE, "alice-secret").await;
        assert_eq!(code, "28P01");
    })
    .await
}

/// `auth_query`: users the auth file does not list are looked up in
/// PostgreSQL as `auth_user`, through a SECURITY DEFINER function in
/// `auth_dbname` (PgBouncer's recipe), and log in with the secret
/// PostgreSQL has: SCRAM (passed through to PostgreSQL) or md5.
#[tokio::test]
async fn auth_query_finds_users_the_auth_file_does_not_list() {
    within(120, async {
        let cluster = Cluster::dedicated();
        cluster.psql_admin(&[
            "CREATE ROLE lookup LOGIN PASSWORD 'lookup-secret'",
            "CREATE ROLE dyn_scram LOGIN PASSWORD 'scram-secret'",
            &format!("SET password_encryption = 'md5'; CREATE ROLE {MD5_ROLE} LOGIN PASSWORD 'md5-secret'"),
            "CREATE FUNCTION public.user_lookup(name text, OUT usename text, OUT passwd text) \
             RETURNS record LANGUAGE sql SECURITY DEFINER AS \
             $$ SELECT rolname::text, rolpassword FROM pg_authid WHERE rolname = name AND rolcanlogin $$",
            "REVOKE ALL ON FUNCTION public.user_lookup(text) FROM PUBLIC",
            "GRANT EXECUTE ON FUNCTION public.user_lookup(text) TO lookup",
        ]);
        let dir = scratch_dir("authquery");
        let userlist = dir.join("userlist.txt");
        std::fs::write(&userlist, "\"lookup\" \"lookup-secret\"\n").unwrap();
        let config = dir.join("pgdyno.toml");
        let port = cluster.port();
        std::fs::write(
            &config,
            format!(
                "auth_file = \"{}\"\n\
                 auth_user = \"lookup\"\n\
                 auth_dbname = \"postgres\"\n\
                 auth_query = \"SELECT usename, passwd FROM public.user_lookup($1)\"\n\
                 [databases]\n\
                 {APP_DB} = \"postgres://127.0.0.1:{port}/{APP_DB}\"\n\
                 postgres = \"postgres://127.0.0.1:{port}/postgres\"\n",
                userlist.display()
            ),
        )
        .unwrap();
        let config = config.to_str().unwrap();

        let scram = Pgdyno::start(&["--config", config]).await;
        select_one_as(&scram, "dyn_scram", "scram-secret").await;
        let (code, wrong) = login_error(&scram, APP_DB, "dyn_scram", "not-it").await;
        assert_eq!(code, "28P01", "{wrong}");
        let (code, unknown) = login_error(&scram, APP_DB, "nosuchuser", "not-it").await;
        assert_eq!(code, "28P01", "{unknown}");
        assert_eq!(
            wrong.replace("dyn_scram", "USER"),
            unknown.replace("nosuchuser", "USER")
        );

        // An md5 secret: the client answers md5, pgdyno logs in with it.
        let md5 = Pgdyno::start(&["--config", config, "--auth-type", "md5"]).await;
        select_one_as(&md5, MD5_ROLE, "md5-secret").await;
        let (code, _) = login_error(&md5, APP_DB, MD5_ROLE, "not-it").await;
        assert_eq!(code, "28P01");

        // Without auth_user, only the auth file's users get in.
        let no_lookup = Pgdyno::start(&["--config", config, "--auth-user", ""]).await;
        let (code, _) = login_error(&no_lookup, APP_DB, "dyn_scram", "scram-secret").await;
        assert_eq!(code, "28P01");
    })
    .await
}

/// The PBKDF2 iteration count pgdyno's SCRAM exchange tells `user`
/// (`i=` in server-first-message).
async fn scram_iterations_told(pgdyno: &Pgdyno, user: &str) -> String {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
    let mut raw = RawConn::connect(pgdyno.port()).await;
    let code = raw.start(&[("user", user), ("database", APP_DB)]).await;
    assert_eq!(code.expect("startup accepted"), AUTH_SASL);
    let scram = ScramSha256::new(b"whatever", ChannelBinding::unsupported());
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::sasl_initial_response(
        SCRAM_SHA_256,
        scram.message(),
        &mut out,
    )
    .unwrap();
    raw.send(&out).await.unwrap();
    let msg = raw.recv().await.expect("SASLContinue");
    assert_eq!((msg.tag, &msg.body[..4]), (b'R', &11i32.to_be_bytes()[..]));
    let text = String::from_utf8_lossy(&msg.body[4..]).into_owned();
    text.split(',')
        .find_map(|f| f.strip_prefix("i="))
        .unwrap_or_else(|| panic!("no i= in {text}"))
        .to_owned()
}

/// `scram_iterations`: the secret pgdyno makes from a plain password has
/// that many iterations, and so has an unknown user's decoy (the count
/// tells nothing); the login still works.
#[tokio::test]
async fn scram_iterations_sets_the_derived_secrets_count() {
    within(60, async {
        let default = pgdyno(&[]).await;
        assert_eq!(scram_iterations_told(&default, APP_USER).await, "4096");
        let more = pgdyno(&["--scram-iterations", "5000"]).await;
        assert_eq!(scram_iterations_told(&more, APP_USER).await, "5000");
        assert_eq!(scram_iterations_told(&more, "nosuchuser").await, "5000");
        select_one_as(&more, APP_USER, APP_PASSWORD).await;
    })
    .await
}
