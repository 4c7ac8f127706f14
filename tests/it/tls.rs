//! TLS on both sides of pgdyno, with certificates made at test time
//! (`harness::tls`):
//!
//! - `client`: applications to pgdyno: client_tls_sslmode from prefer to
//!   verify-full with tokio-postgres and psql, plaintext refused but the
//!   Unix socket served, certificates from PEM env vars, channel binding
//!   (SCRAM-SHA-256-PLUS), settings that stop pgdyno;
//! - `handshake`: TLS 1.2 and 1.3, client_tls_protocols, PostgreSQL 17's
//!   direct TLS with and without ALPN, silent and garbage handshakes that
//!   must not hold up anyone else;
//! - `backend`: pgdyno to PostgreSQL with `ssl = on`: server_tls_sslmode
//!   and the upstream URL's sslmode, sslrootcert, sslcert/sslkey and
//!   channel_binding, and what a client sees when TLS to PostgreSQL fails.
//! - `wire`: the protocol by hand over any stream (a TLS one included).
//!
//! This file holds what they share: a pgdyno offering TLS to clients, and
//! tokio-postgres settings for it.

mod backend;
mod client;
mod handshake;
mod wire;

use crate::harness::*;
use std::time::{Duration, Instant};
use tokio_postgres::config::SslMode;
use tokio_postgres::Client;

/// pgdyno in front of the shared (plaintext) cluster, under
/// client_tls_sslmode `sslmode`, showing clients `test_certs().server`
/// and checking client certificates against the test CA.
async fn tls_pgdyno(sslmode: &str, extra: &[&str]) -> Pgdyno {
    let certs = test_certs();
    let url = Cluster::shared().url(APP_DB);
    let mut args = vec![
        "--upstream",
        &url,
        "--client-tls-sslmode",
        sslmode,
        "--client-tls-cert-file",
        certs.server.cert_path(),
        "--client-tls-key-file",
        certs.server.key_path(),
        "--client-tls-ca-file",
        certs.ca.cert_path(),
    ];
    args.extend_from_slice(extra);
    Pgdyno::start(&args).await
}

/// tokio-postgres settings for `app` through pgdyno with TLS required
/// (`ClientTls` checks the certificate as verify-full would).
fn tls_config(pgdyno: &Pgdyno) -> tokio_postgres::Config {
    let mut config = pgdyno.config(APP_DB);
    config.ssl_mode(SslMode::Require);
    config
}

/// Connects as `app` with TLS configured by `tls`, panicking on error.
async fn connect_with(pgdyno: &Pgdyno, tls: &ClientTls) -> Client {
    connect_tls(&tls_config(pgdyno), tls.connector())
        .await
        .unwrap_or_else(|e| panic!("TLS login through pgdyno: {e} ({:?})", e.as_db_error()))
}

/// Runs `SELECT <n>` and checks the answer.
async fn assert_select(client: &Client, n: i32) {
    let row = client
        .query_typed_one(&format!("SELECT {n}"), &[])
        .await
        .unwrap_or_else(|e| panic!("SELECT {n}: {e} ({:?})", e.as_db_error()));
    assert_eq!(row.get::<_, i32>(0), n);
}

/// SQLSTATE and message of a server error; panics on any other error.
fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got: {e}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// Waits (5 s at most) for a line of pgdyno's log that contains every
/// one of `needles` (in any case).
async fn wait_for_log(pgdyno: &Pgdyno, needles: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let matches = |line: &str| {
        let line = line.to_lowercase();
        needles.iter().all(|n| line.contains(&n.to_lowercase()))
    };
    while !pgdyno.log().lines().any(matches) {
        assert!(
            Instant::now() < deadline,
            "no line of pgdyno's log mentions all of {needles:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The harness against PostgreSQL alone: its certificates, its
/// connector's verify-full and channel binding, the TLS cluster's rules.
#[tokio::test]
async fn the_harness_speaks_tls_to_postgresql() {
    use tokio_postgres::config::ChannelBinding;
    within(60, async {
        let cluster = Cluster::shared_tls();
        let direct = |db: &str| {
            let mut config = tokio_postgres::Config::new();
            config
                .host("127.0.0.1")
                .port(cluster.port())
                .user(APP_USER)
                .password(APP_PASSWORD)
                .dbname(db)
                .ssl_mode(SslMode::Require)
                .channel_binding(ChannelBinding::Require);
            config
        };
        let certs = test_certs();
        for (tls, version) in [
            (ClientTls::new(), "TLSv1.3"),
            (ClientTls::new().tls12_only(), "TLSv1.2"),
        ] {
            let client = connect_tls(&direct(APP_DB), tls.connector())
                .await
                .unwrap_or_else(|e| panic!("TLS to PostgreSQL: {e} ({:?})", e.as_db_error()));
            let row = client
                .query_one(
                    "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap();
            assert!(row.get::<_, bool>(0));
            assert_eq!(row.get::<_, String>(1), version);
        }
        let tls = ClientTls::new().identity(&certs.app);
        let client = connect_tls(&direct(CERT_DB), tls.connector())
            .await
            .unwrap_or_else(|e| panic!("{CERT_DB} with a certificate: {e}"));
        assert_select(&client, 1).await;
        for tls in [ClientTls::new(), ClientTls::new().identity(&certs.mallory)] {
            let result = connect_tls(&direct(CERT_DB), tls.connector()).await;
            assert!(result.is_err(), "{CERT_DB} without app's certificate");
        }
    })
    .await
}
