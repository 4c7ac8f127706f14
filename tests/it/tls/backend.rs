//! pgdyno to PostgreSQL over TLS, checked from PostgreSQL's side
//! (pg_stat_ssl for the backend that ran the client's query) and from the
//! client's (the error it gets when TLS to PostgreSQL cannot be had):
//! server_tls_sslmode and the upstream URL's sslmode, sslrootcert,
//! sslcert/sslkey and channel_binding.
//!
//! Clients talk to pgdyno in plaintext here; the client side is `client`.

use super::*;

async fn via(url: &str, extra: &[&str]) -> Pgdyno {
    let mut args = vec!["--upstream", url];
    args.extend_from_slice(extra);
    Pgdyno::start(&args).await
}

/// `cluster`'s URL for `app` on `db`, with URL parameters `query`.
fn url_with(cluster: &Cluster, db: &str, query: &str) -> String {
    format!("{}?{query}", cluster.url(db))
}

/// Runs a query through `pgdyno` on `db` and asks `cluster` whether the
/// backend that ran it is on TLS: its TLS version if so.
async fn backend_tls(pgdyno: &Pgdyno, cluster: &Cluster, db: &str) -> Option<String> {
    let client = pgdyno.connect(db).await;
    let pid: i32 = client
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap_or_else(|e| panic!("query through pgdyno: {e} ({:?})", e.as_db_error()))
        .get(0);
    let row = cluster
        .admin()
        .await
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("pg_stat_ssl row for pgdyno's backend");
    row.get::<_, bool>(0).then(|| row.get(1))
}

/// What a client of `pgdyno` gets when pgdyno cannot log in to
/// PostgreSQL: the error of its login or else of its first query.
async fn backend_failure(pgdyno: &Pgdyno, db: &str) -> (String, String) {
    let err = match connect(&pgdyno.config(db)).await {
        Err(e) => e,
        Ok(client) => client
            .simple_query("SELECT 1")
            .await
            .expect_err("a query must fail when pgdyno cannot log in to PostgreSQL"),
    };
    db_error(&err)
}

/// The failure is 08006 and its message contains `word` (any case).
async fn assert_backend_fails(pgdyno: &Pgdyno, db: &str, word: &str) {
    let (code, message) = backend_failure(pgdyno, db).await;
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.to_lowercase().contains(word),
        "the error does not say {word:?}: {message}"
    );
}

#[tokio::test]
async fn server_tls_sslmode_toward_a_tls_server() {
    within(60, async {
        let cluster = Cluster::shared_tls();
        let url = cluster.url(APP_DB);
        for (mode, tls) in [
            (None, true),
            (Some("prefer"), true),
            (Some("allow"), true),
            (Some("require"), true),
            (Some("disable"), false),
        ] {
            let pgdyno = match mode {
                Some(mode) => via(&url, &["--server-tls-sslmode", mode]).await,
                None => via(&url, &[]).await,
            };
            let version = backend_tls(&pgdyno, cluster, APP_DB).await;
            assert_eq!(
                version.is_some(),
                tls,
                "server_tls_sslmode {mode:?}: {version:?}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn server_tls_protocols_toward_postgresql() {
    within(60, async {
        let cluster = Cluster::shared_tls();
        let url = cluster.url(APP_DB);
        for (protocols, version) in [
            (None, "TLSv1.3"),
            (Some("tlsv1.2"), "TLSv1.2"),
            (Some("all"), "TLSv1.3"),
        ] {
            let pgdyno = match protocols {
                Some(p) => via(&url, &["--server-tls-protocols", p]).await,
                None => via(&url, &[]).await,
            };
            let got = backend_tls(&pgdyno, cluster, APP_DB).await;
            assert_eq!(
                got.as_deref(),
                Some(version),
                "server_tls_protocols {protocols:?}"
            );
        }
    })
    .await
}

/// server_tls_ciphers: PostgreSQL (OpenSSL) reports the suite pgdyno's
/// backend negotiated; a named TLS 1.2 suite is the one used.
#[tokio::test]
async fn server_tls_ciphers_toward_postgresql() {
    within(60, async {
        let cluster = Cluster::shared_tls();
        let url = cluster.url(APP_DB);
        for cipher in [
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ] {
            let pgdyno = via(
                &url,
                &[
                    "--server-tls-protocols",
                    "tlsv1.2",
                    "--server-tls-ciphers",
                    cipher,
                ],
            )
            .await;
            let client = pgdyno.connect(APP_DB).await;
            let pid: i32 = client
                .query_typed_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            let used: String = cluster
                .admin()
                .await
                .query_one("SELECT cipher FROM pg_stat_ssl WHERE pid = $1", &[&pid])
                .await
                .unwrap()
                .get(0);
            assert_eq!(used, cipher);
        }
    })
    .await
}

#[tokio::test]
async fn verify_full_trusting_the_test_ca() {
    within(60, async {
        let cluster = Cluster::shared_tls();
        let certs = test_certs();
        let ca = certs.ca.cert_path();
        let pgdyno = via(
            &cluster.url(APP_DB),
            &[
                "--server-tls-sslmode",
                "verify-full",
                "--server-tls-ca-file",
                ca,
            ],
        )
        .await;
        assert!(backend_tls(&pgdyno, cluster, APP_DB).await.is_some());

        let url = url_with(
            cluster,
            APP_DB,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        );
        let pgdyno = via(&url, &[]).await;
        assert!(backend_tls(&pgdyno, cluster, APP_DB).await.is_some());

        // The system's roots, named in the URL, beat the setting: they do
        // not know the test CA.
        let url = url_with(cluster, APP_DB, "sslmode=verify-full&sslrootcert=system");
        let pgdyno = via(&url, &["--server-tls-ca-file", ca]).await;
        assert_backend_fails(&pgdyno, APP_DB, "certificate").await;

        // Trusting some other certificate instead: the CA is unknown.
        let other = certs.self_signed.cert_path();
        let url = url_with(
            cluster,
            APP_DB,
            &format!("sslmode=verify-full&sslrootcert={other}"),
        );
        let pgdyno = via(&url, &["--server-tls-ca-file", ca]).await;
        assert_backend_fails(&pgdyno, APP_DB, "certificate").await;
    })
    .await
}

#[tokio::test]
async fn the_url_sslmode_wins_over_server_tls_sslmode() {
    within(60, async {
        let tls = Cluster::shared_tls();
        let url = url_with(tls, APP_DB, "sslmode=disable");
        let pgdyno = via(&url, &["--server-tls-sslmode", "require"]).await;
        assert_eq!(backend_tls(&pgdyno, tls, APP_DB).await, None);

        let url = url_with(tls, APP_DB, "sslmode=require");
        let pgdyno = via(&url, &["--server-tls-sslmode", "disable"]).await;
        assert!(backend_tls(&pgdyno, tls, APP_DB).await.is_some());

        let plain = Cluster::shared();
        let url = url_with(plain, APP_DB, "sslmode=prefer");
        let pgdyno = via(&url, &["--server-tls-sslmode", "require"]).await;
        assert_eq!(backend_tls(&pgdyno, plain, APP_DB).await, None);
    })
    .await
}

#[tokio::test]
async fn prefer_and_require_toward_a_plaintext_server() {
    within(60, async {
        let plain = Cluster::shared();
        let pgdyno = via(&plain.url(APP_DB), &[]).await;
        assert_eq!(backend_tls(&pgdyno, plain, APP_DB).await, None);

        let pgdyno = via(&plain.url(APP_DB), &["--server-tls-sslmode", "require"]).await;
        let (code, message) = backend_failure(&pgdyno, APP_DB).await;
        assert_eq!(code, "08006", "{message}");
        let said = message.to_lowercase();
        assert!(
            said.contains("ssl") || said.contains("tls"),
            "the error does not say TLS was refused: {message}"
        );
    })
    .await
}

#[tokio::test]
async fn certificate_checks_toward_wrong_name_and_self_signed_servers() {
    within(90, async {
        let certs = test_certs();
        let ca = certs.ca.cert_path();
        let cluster = Cluster::dedicated_tls(&certs.wrong_name);
        let url = cluster.url(APP_DB);
        let with_ca =
            |mode: &'static str| ["--server-tls-sslmode", mode, "--server-tls-ca-file", ca];

        // A certificate from the CA, for wrong.example.
        let pgdyno = via(&url, &with_ca("verify-full")).await;
        assert_backend_fails(&pgdyno, APP_DB, "certificate").await;
        for mode in ["verify-ca", "require"] {
            let pgdyno = via(&url, &with_ca(mode)).await;
            let version = backend_tls(&pgdyno, &cluster, APP_DB).await;
            assert!(
                version.is_some(),
                "{mode} toward wrong.example's certificate"
            );
        }

        // A self-signed certificate for 127.0.0.1.
        cluster.present_cert(&certs.self_signed);
        let pgdyno = via(&url, &["--server-tls-sslmode", "require"]).await;
        let version = backend_tls(&pgdyno, &cluster, APP_DB).await;
        assert!(
            version.is_some(),
            "require toward a self-signed certificate"
        );
        for mode in ["verify-ca", "verify-full"] {
            let pgdyno = via(&url, &with_ca(mode)).await;
            assert_backend_fails(&pgdyno, APP_DB, "certificate").await;
        }
    })
    .await
}

#[tokio::test]
async fn channel_binding_toward_postgresql() {
    within(60, async {
        let tls = Cluster::shared_tls();
        // PostgreSQL checks the binding data: logging in proves it right.
        for query in [
            "channel_binding=require",
            "sslmode=require&channel_binding=require",
            "sslmode=verify-full&channel_binding=require",
        ] {
            let url = url_with(tls, APP_DB, query);
            let ca = test_certs().ca.cert_path();
            let pgdyno = via(&url, &["--server-tls-ca-file", ca]).await;
            let version = backend_tls(&pgdyno, tls, APP_DB).await;
            assert!(version.is_some(), "{query}");
        }
        let url = url_with(tls, APP_DB, "sslmode=disable&channel_binding=require");
        let pgdyno = via(&url, &[]).await;
        let (_, message) = backend_failure(&pgdyno, APP_DB).await;
        assert!(
            message.to_lowercase().contains("channel binding")
                || message.contains("channel_binding"),
            "{message}"
        );
    })
    .await
}

#[tokio::test]
async fn client_certificate_toward_postgresql() {
    within(60, async {
        // PostgreSQL lets `app` into CERT_DB only with a certificate from
        // the test CA whose CN is `app`.
        let tls = Cluster::shared_tls();
        let certs = test_certs();
        let ca = certs.ca.cert_path();
        let with_cert = |cert: &CertKey| {
            format!(
                "sslmode=verify-full&sslrootcert={ca}&sslcert={}&sslkey={}",
                cert.cert_path(),
                cert.key_path()
            )
        };
        let pgdyno = via(&url_with(tls, CERT_DB, &with_cert(&certs.app)), &[]).await;
        assert!(backend_tls(&pgdyno, tls, CERT_DB).await.is_some());

        let pgdyno = via(
            &tls.url(CERT_DB),
            &[
                "--server-tls-sslmode",
                "require",
                "--server-tls-cert-file",
                certs.app.cert_path(),
                "--server-tls-key-file",
                certs.app.key_path(),
            ],
        )
        .await;
        assert!(backend_tls(&pgdyno, tls, CERT_DB).await.is_some());

        for url in [
            url_with(tls, CERT_DB, &with_cert(&certs.mallory)),
            url_with(tls, CERT_DB, "sslmode=require"),
        ] {
            let pgdyno = via(&url, &[]).await;
            let (code, message) = backend_failure(&pgdyno, CERT_DB).await;
            assert!(
                code.starts_with("08") || code.starts_with("28"),
                "{code} {message}"
            );
        }
    })
    .await
}
