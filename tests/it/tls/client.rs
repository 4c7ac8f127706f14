//! Applications to pgdyno over TLS: each client_tls_sslmode as
//! tokio-postgres and psql meet it, client certificates under verify-ca
//! and verify-full, auth_type = cert (and hba's cert records), the certificate from PEM env vars,
//! SCRAM channel binding, and the TLS settings that must stop pgdyno at
//! startup.

use super::wire::{sasl_mechanisms, Scram, WireConn};
use super::*;
use std::process::Output;
use tokio_postgres::config::ChannelBinding;

/// psql through pgdyno with extra libpq settings (`conninfo`) and
/// commands: `\conninfo` first (to see TLS), then `sql`.
async fn psql_with(pgdyno: &Pgdyno, conninfo: &str, sql: &str) -> Output {
    let conninfo = format!("dbname={APP_DB} {conninfo}");
    psql(
        pgdyno.port(),
        APP_DB,
        &["-At", "-d", &conninfo, "-c", "\\conninfo", "-c", sql],
    )
    .await
}

/// psql with `conninfo` logged in over TLS and printed `SELECT 42`'s answer.
async fn assert_psql_tls(pgdyno: &Pgdyno, conninfo: &str) {
    let out = psql_with(pgdyno, conninfo, "SELECT 42").await;
    let text = output_text(&out);
    assert!(out.status.success(), "psql {conninfo}: {text}");
    assert!(
        text.contains("SSL connection"),
        "psql {conninfo} not on TLS: {text}"
    );
    assert!(text.lines().any(|l| l == "42"), "psql {conninfo}: {text}");
}

/// psql with `conninfo` failed; returns what it said.
async fn assert_psql_refused(pgdyno: &Pgdyno, conninfo: &str) -> String {
    let out = psql_with(pgdyno, conninfo, "SELECT 42").await;
    let text = output_text(&out);
    assert!(!out.status.success(), "psql {conninfo} must fail: {text}");
    assert!(
        !text.lines().any(|l| l == "42"),
        "psql {conninfo} ran: {text}"
    );
    text
}

#[tokio::test]
async fn require_serves_tokio_postgres_and_psql_over_tls() {
    within(60, async {
        let pgdyno = tls_pgdyno("require", &[]).await;
        let client = connect_with(&pgdyno, &ClientTls::new()).await;
        assert_select(&client, 1).await;
        assert_psql_tls(&pgdyno, "sslmode=require").await;
        let ca = test_certs().ca.cert_path();
        assert_psql_tls(&pgdyno, &format!("sslmode=verify-full sslrootcert={ca}")).await;
        // The session goes on working over TLS.
        for n in 2..5 {
            assert_select(&client, n).await;
        }
    })
    .await
}

#[tokio::test]
async fn require_refuses_plaintext_tcp_but_serves_the_unix_socket() {
    within(60, async {
        let dir = scratch_dir("sock");
        let pgdyno = tls_pgdyno("require", &["--unix-socket-dir", dir.to_str().unwrap()]).await;

        let err = connect(&pgdyno.config(APP_DB))
            .await
            .expect_err("a plaintext TCP client must be refused");
        let (code, message) = db_error(&err);
        assert_eq!(code, "28000", "{message}");
        assert!(message.contains("SSL required"), "{message}");
        let text = assert_psql_refused(&pgdyno, "sslmode=disable").await;
        assert!(text.contains("SSL required"), "{text}");

        pgdyno.wait_for_socket(&dir).await;
        let config = pgdyno.unix_config_as(&dir, APP_DB, APP_USER, APP_PASSWORD);
        let client = connect(&config)
            .await
            .unwrap_or_else(|e| panic!("the Unix socket is exempt from require: {e}"));
        assert_select(&client, 3).await;
    })
    .await
}

#[tokio::test]
async fn allow_and_prefer_serve_plaintext_and_tls_clients() {
    within(60, async {
        let allow = tls_pgdyno("allow", &[]).await;
        let pgdyno = tls_pgdyno("prefer", &[]).await;
        for pgdyno in [&allow, &pgdyno] {
            let plain = pgdyno.connect(APP_DB).await;
            let tls = connect_with(pgdyno, &ClientTls::new()).await;
            assert_select(&plain, 1).await;
            assert_select(&tls, 2).await;
        }
        // libpq's default (prefer) takes the TLS on offer.
        assert_psql_tls(&pgdyno, "").await;
        let out = psql_with(&pgdyno, "sslmode=disable", "SELECT 42").await;
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        assert!(!text.contains("SSL connection"), "{text}");
    })
    .await
}

#[tokio::test]
async fn certificate_key_and_ca_from_pem_env_vars() {
    within(60, async {
        let certs = test_certs();
        let url = Cluster::shared().url(APP_DB);
        let pgdyno = Pgdyno::launch(Launch {
            args: &["--upstream", &url, "--client-tls-sslmode", "verify-ca"],
            env: &[
                ("PGDYNO_CLIENT_TLS_CERT_PEM", &certs.server.cert_pem),
                ("PGDYNO_CLIENT_TLS_KEY_PEM", &certs.server.key_pem),
                ("PGDYNO_CLIENT_TLS_CA_PEM", &certs.ca.cert_pem),
            ],
        })
        .await;
        // ClientTls accepts only the test CA's certificate for 127.0.0.1:
        // pgdyno shows the one from the env var.
        let client = connect_with(&pgdyno, &ClientTls::new().identity(&certs.app)).await;
        assert_select(&client, 1).await;
        let rogue = connect_tls(
            &tls_config(&pgdyno),
            ClientTls::new().identity(&certs.rogue_app).connector(),
        )
        .await;
        assert!(rogue.is_err(), "a client certificate from no known CA");
    })
    .await
}

#[tokio::test]
async fn verify_ca_wants_a_client_certificate_from_the_ca() {
    within(60, async {
        let certs = test_certs();
        let pgdyno = tls_pgdyno("verify-ca", &[]).await;
        for cert in [&certs.app, &certs.mallory] {
            let client = connect_with(&pgdyno, &ClientTls::new().identity(cert)).await;
            assert_select(&client, 1).await;
        }
        for (what, tls) in [
            ("no client certificate", ClientTls::new()),
            (
                "a self-signed client certificate",
                ClientTls::new().identity(&certs.rogue_app),
            ),
        ] {
            let result = connect_tls(&tls_config(&pgdyno), tls.connector()).await;
            assert!(result.is_err(), "{what} must be refused");
        }
        wait_for_log(&pgdyno, &["tls_handshake_failed", "certificate"]).await;

        let app = format!(
            "sslmode=require sslcert={} sslkey={}",
            certs.app.cert_path(),
            certs.app.key_path()
        );
        assert_psql_tls(&pgdyno, &app).await;
        assert_psql_refused(&pgdyno, "sslmode=require").await;
        // Still serving after the refusals.
        let client = connect_with(&pgdyno, &ClientTls::new().identity(&certs.app)).await;
        assert_select(&client, 2).await;
    })
    .await
}

#[tokio::test]
async fn verify_full_wants_the_certificate_cn_to_be_the_user() {
    within(60, async {
        let certs = test_certs();
        let pgdyno = tls_pgdyno("verify-full", &[]).await;
        let client = connect_with(&pgdyno, &ClientTls::new().identity(&certs.app)).await;
        assert_select(&client, 1).await;

        let tls = ClientTls::new().identity(&certs.mallory);
        let err = connect_tls(&tls_config(&pgdyno), tls.connector())
            .await
            .expect_err("CN mallory logging in as app must be refused");
        let (code, message) = db_error(&err);
        assert_eq!(code, "28000", "{message}");
        assert!(
            message.contains("certificate authentication failed for user \"app\""),
            "{message}"
        );
        let result = connect_tls(&tls_config(&pgdyno), ClientTls::new().connector()).await;
        assert!(result.is_err(), "no client certificate must be refused");

        let with = |cert: &CertKey| {
            format!(
                "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
                certs.ca.cert_path(),
                cert.cert_path(),
                cert.key_path()
            )
        };
        assert_psql_tls(&pgdyno, &with(&certs.app)).await;
        let text = assert_psql_refused(&pgdyno, &with(&certs.mallory)).await;
        assert!(text.contains("certificate authentication failed"), "{text}");
    })
    .await
}

/// The `app` certificate logs in as app with a wrong password; CN mallory
/// logging in as app is refused with 28000, whose message this returns.
async fn certificate_is_the_login(pgdyno: &Pgdyno) -> String {
    let certs = test_certs();
    let mut config = tls_config(pgdyno);
    config.password("not-the-password");
    let client = connect_tls(&config, ClientTls::new().identity(&certs.app).connector())
        .await
        .unwrap_or_else(|e| panic!("certificate login: {e} ({:?})", e.as_db_error()));
    assert_select(&client, 1).await;
    let mallory = ClientTls::new().identity(&certs.mallory).connector();
    let Err(err) = connect_tls(&config, mallory).await else {
        panic!("CN mallory logging in as app must be refused");
    };
    let (code, message) = db_error(&err);
    assert_eq!(code, "28000", "{message}");
    message
}

/// auth_type = cert: the certificate is the login (its CN the user name)
/// and no password is asked; another CN, or a Unix-socket client with no
/// certificate, is refused; and pgdyno will not start with auth_type cert
/// but without verify-full.
#[tokio::test]
async fn auth_type_cert_logs_in_by_the_certificate_alone() {
    within(60, async {
        let dir = scratch_dir("cert-auth");
        let pgdyno = tls_pgdyno(
            "verify-full",
            &[
                "--auth-type",
                "cert",
                "--unix-socket-dir",
                dir.to_str().unwrap(),
            ],
        )
        .await;
        certificate_is_the_login(&pgdyno).await;

        pgdyno.wait_for_socket(&dir).await;
        let unix = pgdyno.unix_config_as(&dir, APP_DB, APP_USER, APP_PASSWORD);
        let Err(err) = connect(&unix).await else {
            panic!("a Unix-socket client without a certificate must be refused");
        };
        let (code, message) = db_error(&err);
        assert_eq!(code, "28000", "{message}");
        assert!(message.contains("no client certificate"), "{message}");

        let url = Cluster::shared().url(APP_DB);
        let (status, log) = run_to_exit(Launch {
            args: &["--upstream", &url, "--auth-type", "cert"],
            ..Launch::default()
        })
        .await;
        assert!(status.is_some_and(|s| !s.success()), "{log}");
        assert!(
            log.contains("auth_type") && log.contains("verify-full"),
            "{log}"
        );
    })
    .await
}

/// auth_type = hba with a `hostssl ... cert` record, the canonical use: TCP
/// clients come over TLS with a certificate whose CN is their user. Under
/// verify-ca the handshake checks only that the CA signed it; the record
/// checks the CN.
#[tokio::test]
async fn hba_cert_records_check_the_certificates_cn() {
    within(60, async {
        let hba = scratch_dir("hba-tls").join("hba.conf");
        std::fs::write(&hba, "hostssl all all 127.0.0.1/32 cert\n").unwrap();
        let hba = hba.to_str().unwrap();
        let pgdyno = tls_pgdyno("verify-ca", &["--auth-type", "hba", "--auth-hba-file", hba]).await;
        let message = certificate_is_the_login(&pgdyno).await;
        assert!(message.contains("CN is \"mallory\""), "{message}");
    })
    .await
}

/// `cert map=certs`: the CN is looked up in `auth_ident_file`'s map, which
/// here lets mallory's certificate log in as app, and app's not at all.
#[tokio::test]
async fn an_hba_cert_map_says_which_cn_may_be_which_user() {
    within(60, async {
        let dir = scratch_dir("hba-tls-map");
        let (hba, ident) = (dir.join("hba.conf"), dir.join("ident.conf"));
        std::fs::write(&hba, "hostssl all all 127.0.0.1/32 cert map=certs\n").unwrap();
        std::fs::write(&ident, format!("certs /^mal(.*)$ {APP_USER}\n")).unwrap();
        let pgdyno = tls_pgdyno(
            "verify-ca",
            &[
                "--auth-type",
                "hba",
                "--auth-hba-file",
                hba.to_str().unwrap(),
                "--auth-ident-file",
                ident.to_str().unwrap(),
            ],
        )
        .await;
        let certs = test_certs();
        let config = tls_config(&pgdyno);
        let mallory = ClientTls::new().identity(&certs.mallory).connector();
        let client = connect_tls(&config, mallory)
            .await
            .unwrap_or_else(|e| panic!("mallory as app by the map: {e} ({:?})", e.as_db_error()));
        assert_select(&client, 1).await;
        let app = ClientTls::new().identity(&certs.app).connector();
        let Err(err) = connect_tls(&config, app).await else {
            panic!("the map has no line for CN app");
        };
        let (code, message) = db_error(&err);
        assert_eq!(code, "28000", "{message}");
        assert!(message.contains("CN is \"app\""), "{message}");
    })
    .await
}

#[tokio::test]
async fn channel_binding_over_tls() {
    within(60, async {
        let pgdyno = tls_pgdyno("prefer", &[]).await;
        assert_psql_tls(&pgdyno, "sslmode=require channel_binding=require").await;
        let mut config = tls_config(&pgdyno);
        config.channel_binding(ChannelBinding::Require);
        let client = connect_tls(&config, ClientTls::new().connector())
            .await
            .unwrap_or_else(|e| panic!("channel_binding=require: {e} ({:?})", e.as_db_error()));
        assert_select(&client, 1).await;

        // Over TLS both mechanisms are offered, and the binding data is
        // checked: the right hash logs in, a wrong one does not.
        for (right, hash) in [(true, None), (false, Some(vec![0x5a; 32]))] {
            let tls = ssl_request_handshake(pgdyno.port(), ClientTls::new().config())
                .await
                .expect("TLS handshake");
            let hash = hash.unwrap_or_else(|| {
                tls_server_end_point(tls.get_ref().1).expect("server certificate")
            });
            let mut conn = WireConn::new(tls);
            let first = conn.start(APP_DB).await.expect("an answer to startup");
            let mechanisms = sasl_mechanisms(&first);
            assert!(
                mechanisms.contains(&"SCRAM-SHA-256-PLUS".to_owned())
                    && mechanisms.contains(&"SCRAM-SHA-256".to_owned()),
                "{mechanisms:?}"
            );
            let login = conn.scram_login(&first, Scram::Plus(hash)).await;
            if right {
                login.unwrap_or_else(|e| panic!("SCRAM-SHA-256-PLUS login: {e:?}"));
                assert_eq!(conn.simple_query("SELECT 7").await.unwrap(), ["7"]);
            } else {
                // PostgreSQL says 08P01 ("channel binding check failed").
                let e = login.expect_err("wrong channel binding data must be refused");
                assert!(e.code == "08P01" || e.code.starts_with("28"), "{e:?}");
            }
        }

        // In plaintext, -PLUS is not on offer (libpq would give up).
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", pgdyno.port()))
            .await
            .unwrap();
        let mut conn = WireConn::new(tcp);
        let first = conn.start(APP_DB).await.expect("an answer to startup");
        assert_eq!(sasl_mechanisms(&first), ["SCRAM-SHA-256"]);
        conn.scram_login(&first, Scram::Plain)
            .await
            .expect("SCRAM-SHA-256 login in plaintext");
    })
    .await
}

#[tokio::test]
async fn tls_settings_that_stop_pgdyno() {
    within(60, async {
        let url = Cluster::shared().url(APP_DB);
        let certs = test_certs();
        let listen = format!("127.0.0.1:{}", free_port());
        let cases: [(&[&str], &str); 3] = [
            (&["--client-tls-sslmode", "require"], "client_tls_cert_file"),
            (
                &[
                    "--client-tls-sslmode",
                    "require",
                    "--client-tls-cert-file",
                    certs.server.cert_path(),
                    "--client-tls-key-file",
                    certs.server.key_path(),
                    "--client-tls-protocols",
                    "tlsv1.1",
                ],
                "client_tls_protocols",
            ),
            (&["--client-tls-sslmode", "sometimes"], "client_tls_sslmode"),
        ];
        for (extra, key) in cases {
            let mut args = vec!["--listen", &listen, "--upstream", &url];
            args.extend_from_slice(extra);
            let (status, output) = run_to_exit(Launch {
                args: &args,
                env: &[],
            })
            .await;
            let status = status.unwrap_or_else(|| panic!("pgdyno {extra:?} kept running"));
            assert_eq!(status.code(), Some(2), "pgdyno {extra:?}:\n{output}");
            let said = output.to_lowercase().replace('-', "_");
            assert!(
                said.contains(key),
                "pgdyno {extra:?} did not name {key}:\n{output}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn tls_is_off_by_default() {
    within(60, async {
        let url = Cluster::shared().url(APP_DB);
        let pgdyno = Pgdyno::start(&["--upstream", &url]).await;
        let answer = ssl_request_handshake(pgdyno.port(), ClientTls::new().config()).await;
        let err = answer.expect_err("SSLRequest must be declined");
        assert!(err.to_string().contains("'N'"), "{err}");
        // A client that prefers TLS carries on in plaintext.
        let mut config = pgdyno.config(APP_DB);
        config.ssl_mode(SslMode::Prefer);
        let client = connect_tls(&config, ClientTls::new().connector())
            .await
            .expect("sslmode=prefer falls back to plaintext");
        assert_select(&client, 1).await;
        let result = connect_tls(&tls_config(&pgdyno), ClientTls::new().connector()).await;
        assert!(result.is_err(), "sslmode=require cannot be met");
    })
    .await
}
