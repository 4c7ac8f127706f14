//! The TLS handshake itself: versions 1.2 and 1.3 and the
//! client_tls_protocols that narrows them, the suites client_tls_ciphers
//! offers, PostgreSQL 17's direct TLS
//! (ALPN "postgresql" required), and handshakes that stall or send garbage
//! while other clients carry on.

use super::wire::{sasl_mechanisms, Scram, WireConn};
use super::*;
use rustls::ProtocolVersion;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::SslNegotiation;

/// After a TLS handshake on `tls`: a SCRAM-SHA-256-PLUS login as `app`
/// and `SELECT <n>`.
async fn login_and_select(tls: tokio_rustls::client::TlsStream<TcpStream>, n: i32) {
    let hash = tls_server_end_point(tls.get_ref().1).expect("server certificate");
    let mut conn = WireConn::new(tls);
    let first = conn.start(APP_DB).await.expect("an answer to startup");
    conn.scram_login(&first, Scram::Plus(hash))
        .await
        .unwrap_or_else(|e| panic!("login over TLS: {e:?}"));
    let rows = conn.simple_query(&format!("SELECT {n}")).await;
    assert_eq!(rows.unwrap(), [n.to_string()]);
}

#[tokio::test]
async fn tls_1_2_and_1_3_both_work() {
    within(60, async {
        // The default (secure), and the same spelled out.
        for protocols in [None, Some("all"), Some("tlsv1.2,tlsv1.3")] {
            let pgdyno = match protocols {
                Some(p) => tls_pgdyno("require", &["--client-tls-protocols", p]).await,
                None => tls_pgdyno("require", &[]).await,
            };
            for (tls, version) in [
                (ClientTls::new().tls12_only(), ProtocolVersion::TLSv1_2),
                (ClientTls::new().tls13_only(), ProtocolVersion::TLSv1_3),
                (ClientTls::new(), ProtocolVersion::TLSv1_3),
            ] {
                let stream = ssl_request_handshake(pgdyno.port(), tls.config())
                    .await
                    .unwrap_or_else(|e| panic!("{version:?} under {protocols:?}: {e}"));
                assert_eq!(stream.get_ref().1.protocol_version(), Some(version));
                login_and_select(stream, 1).await;
            }
            let client = connect_with(&pgdyno, &ClientTls::new().tls12_only()).await;
            assert_select(&client, 2).await;
        }
    })
    .await
}

#[tokio::test]
async fn client_tls_protocols_tlsv1_3_refuses_a_tls_1_2_client() {
    within(60, async {
        let pgdyno = tls_pgdyno("require", &["--client-tls-protocols", "tlsv1.3"]).await;
        let old =
            ssl_request_handshake(pgdyno.port(), ClientTls::new().tls12_only().config()).await;
        assert!(old.is_err(), "a TLS 1.2-only client must be refused");
        wait_for_log(&pgdyno, &["tls_handshake_failed"]).await;
        let stream = ssl_request_handshake(pgdyno.port(), ClientTls::new().config())
            .await
            .expect("TLS 1.3 handshake");
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(ProtocolVersion::TLSv1_3)
        );
        login_and_select(stream, 3).await;
    })
    .await
}

#[tokio::test]
async fn client_tls_protocols_tlsv1_2_refuses_a_tls_1_3_client() {
    within(60, async {
        let pgdyno = tls_pgdyno("require", &["--client-tls-protocols", "tlsv1.2"]).await;
        let new =
            ssl_request_handshake(pgdyno.port(), ClientTls::new().tls13_only().config()).await;
        assert!(new.is_err(), "a TLS 1.3-only client must be refused");
        let stream = ssl_request_handshake(pgdyno.port(), ClientTls::new().config())
            .await
            .expect("TLS 1.2 handshake");
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(ProtocolVersion::TLSv1_2)
        );
        login_and_select(stream, 4).await;
    })
    .await
}

/// client_tls_ciphers: a TLS 1.2 suite named (by OpenSSL's name) is the
/// only TLS 1.2 suite pgdyno agrees to, though the client prefers others;
/// TLS 1.3 keeps all of its own (none is named); by default the client's
/// first choice is taken.
#[tokio::test]
async fn client_tls_ciphers_chooses_the_suites() {
    within(60, async {
        let suite = |stream: &tokio_rustls::client::TlsStream<TcpStream>| {
            let suite = stream.get_ref().1.negotiated_cipher_suite();
            suite
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default()
        };
        let chacha = "ECDHE-ECDSA-CHACHA20-POLY1305";
        for (ciphers, tls12, tls13) in [
            (
                None,
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS13_AES_256_GCM_SHA384",
            ),
            (
                Some(chacha),
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS13_AES_256_GCM_SHA384",
            ),
        ] {
            let pgdyno = match ciphers {
                Some(c) => tls_pgdyno("require", &["--client-tls-ciphers", c]).await,
                None => tls_pgdyno("require", &[]).await,
            };
            for (tls, want) in [
                (ClientTls::new().tls12_only(), tls12),
                (ClientTls::new().tls13_only(), tls13),
            ] {
                let stream = ssl_request_handshake(pgdyno.port(), tls.config())
                    .await
                    .unwrap_or_else(|e| panic!("client_tls_ciphers {ciphers:?}: {e}"));
                assert_eq!(suite(&stream), want, "client_tls_ciphers {ciphers:?}");
                login_and_select(stream, 5).await;
            }
        }
        // Only RSA suites for an ECDSA certificate: no TLS 1.2 handshake.
        let rsa = tls_pgdyno(
            "require",
            &["--client-tls-ciphers", "ECDHE-RSA-AES128-GCM-SHA256"],
        )
        .await;
        let refused =
            ssl_request_handshake(rsa.port(), ClientTls::new().tls12_only().config()).await;
        assert!(
            refused.is_err(),
            "no suite in common must mean no handshake"
        );
    })
    .await
}

#[tokio::test]
async fn direct_tls_with_alpn_postgresql() {
    within(60, async {
        let pgdyno = tls_pgdyno("require", &[]).await;
        let tls = ClientTls::new().alpn_postgresql();
        let stream = direct_handshake(pgdyno.port(), tls.config())
            .await
            .expect("direct TLS handshake");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
        let hash = tls_server_end_point(stream.get_ref().1).expect("server certificate");
        let mut conn = WireConn::new(stream);
        let first = conn.start(APP_DB).await.expect("an answer to startup");
        assert!(
            sasl_mechanisms(&first).contains(&"SCRAM-SHA-256-PLUS".to_owned()),
            "direct TLS is TLS: channel binding on offer"
        );
        conn.scram_login(&first, Scram::Plus(hash))
            .await
            .unwrap_or_else(|e| panic!("login over direct TLS: {e:?}"));
        assert_eq!(conn.simple_query("SELECT 17").await.unwrap(), ["17"]);
        assert_eq!(
            conn.simple_query("SELECT current_user::text")
                .await
                .unwrap(),
            [APP_USER]
        );

        // A PostgreSQL 17 driver asking for it: tokio-postgres's
        // sslnegotiation=direct.
        let mut config = tls_config(&pgdyno);
        config.ssl_negotiation(SslNegotiation::Direct);
        let client = connect_tls(&config, tls.connector())
            .await
            .unwrap_or_else(|e| panic!("sslnegotiation=direct: {e} ({:?})", e.as_db_error()));
        assert_select(&client, 18).await;
    })
    .await
}

#[tokio::test]
async fn direct_tls_without_alpn_is_refused() {
    within(60, async {
        let pgdyno = tls_pgdyno("require", &[]).await;
        // Refused in the handshake, or closed before a startup gets an answer.
        if let Ok(stream) = direct_handshake(pgdyno.port(), ClientTls::new().config()).await {
            let mut conn = WireConn::new(stream);
            let answer = conn.start(APP_DB).await;
            assert!(
                answer.is_none(),
                "direct TLS without ALPN served: {answer:?}"
            );
        }
        wait_for_log(&pgdyno, &["tls_handshake_failed", "alpn"]).await;
        // Still serving the right way in.
        let client = connect_with(&pgdyno, &ClientTls::new()).await;
        assert_select(&client, 1).await;
    })
    .await
}

/// Connects, sends SSLRequest and reads pgdyno's 'S'.
async fn accepted_ssl_request(port: u16) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(&ssl_request()).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    tcp
}

#[tokio::test]
async fn silent_and_garbage_handshakes_hold_up_no_one() {
    within(60, async {
        let pgdyno = tls_pgdyno("require", &[]).await;
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(accepted_ssl_request(pgdyno.port()).await);
        }
        let mut garbage = accepted_ssl_request(pgdyno.port()).await;
        garbage
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();

        // Other clients are served at once meanwhile.
        for n in 0..3 {
            let started = Instant::now();
            let client = connect_with(&pgdyno, &ClientTls::new()).await;
            assert_select(&client, n).await;
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "a TLS login and query took {:?} beside stalled handshakes",
                started.elapsed()
            );
        }

        // The garbage one is closed (after a TLS alert, perhaps).
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 256];
            loop {
                match garbage.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "pgdyno kept a garbage handshake open");
        wait_for_log(&pgdyno, &["tls_handshake_failed"]).await;
        drop(silent);
    })
    .await
}

#[tokio::test]
async fn a_silent_handshake_ends_at_client_login_timeout() {
    within(60, async {
        let pgdyno = tls_pgdyno("require", &["--client-login-timeout", "1"]).await;
        let mut silent = accepted_ssl_request(pgdyno.port()).await;
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "a handshake silent for {:?} is still open: {read:?}",
            started.elapsed()
        );
        wait_for_log(&pgdyno, &["tls_handshake_failed", "client_login_timeout"]).await;
    })
    .await
}

#[tokio::test]
async fn sighup_swaps_the_certificate_and_keeps_it_when_the_new_one_is_broken() {
    within(60, async {
        let certs = test_certs();
        let dir = scratch_dir("tls-reload");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let present = |c: &CertKey| {
            std::fs::write(&cert, &c.cert_pem).expect("write cert");
            std::fs::write(&key, &c.key_pem).expect("write key");
        };
        // First a certificate the client cannot accept for 127.0.0.1.
        present(&certs.wrong_name);
        let config = dir.join("pgdyno.toml");
        std::fs::write(
            &config,
            format!(
                "client_tls_sslmode = \"require\"\nclient_tls_cert_file = \"{}\"\n\
                 client_tls_key_file = \"{}\"\n[databases]\n{APP_DB} = \"{}\"\n",
                cert.display(),
                key.display(),
                Cluster::shared().url(APP_DB)
            ),
        )
        .expect("write config");
        let pgdyno = Pgdyno::start(&["--config", config.to_str().unwrap()]).await;
        let handshake = || ssl_request_handshake(pgdyno.port(), ClientTls::new().config());
        assert!(handshake().await.is_err(), "wrong.example accepted");

        present(&certs.server);
        pgdyno.signal("HUP");
        wait_for_log(&pgdyno, &["configuration reloaded"]).await;
        let stream = handshake().await.expect("the reloaded certificate");
        let shown = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(shown, certs.server.cert_der);
        login_and_select(stream, 4).await;

        // A broken certificate is refused; the one in use stays.
        std::fs::write(&cert, "not a certificate").expect("write cert");
        pgdyno.signal("HUP");
        wait_for_log(&pgdyno, &["reload_failed"]).await;
        login_and_select(handshake().await.expect("the kept certificate"), 5).await;
    })
    .await
}
