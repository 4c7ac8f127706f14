//! Input no real client sends, sent as raw bytes: garbage, a truncated
//! startup packet, absurd or undersized lengths, a message over
//! max_packet_size, silence past client_login_timeout. Each must end in an
//! ErrorResponse or a close (promptly, without waiting for bytes that will
//! never come), and a client connected beforehand must not notice. Also the
//! SSLRequest, which pgdyno answers 'N' before going on in plain text.

use crate::harness::*;
use std::time::{Duration, Instant};

async fn pgdyno(extra: &[&str]) -> Pgdyno {
    let url = Cluster::shared().url(APP_DB);
    let mut args = vec!["--upstream", &url, "--pool-size", "2"];
    args.extend_from_slice(extra);
    Pgdyno::start(&args).await
}

/// Sends `bytes` as a fresh client, then checks pgdyno refuses them within
/// 5 s, and that `bystander` (connected earlier) and a new client still work.
async fn assert_refused_while_others_work(
    pgdyno: &mut Pgdyno,
    what: &str,
    bytes: &[u8],
    half_close: bool,
) {
    let bystander = pgdyno.connect(APP_DB).await;
    bystander.query_typed_one("SELECT 1", &[]).await.unwrap();

    let mut raw = RawConn::connect(pgdyno.port()).await;
    // pgdyno may close before reading it all; that is fine.
    let _ = raw.send(bytes).await;
    if half_close {
        raw.shutdown_write().await;
    }
    if let Some(err) = assert_refused(&raw.until_closed(5).await, what) {
        assert!(
            !err.code.is_empty(),
            "ErrorResponse without SQLSTATE after {what}"
        );
    }

    assert!(pgdyno.is_running(), "pgdyno died after {what}");
    let row = bystander
        .query_typed_one("SELECT 2", &[])
        .await
        .unwrap_or_else(|e| panic!("a connected client broke after {what}: {e}"));
    assert_eq!(row.get::<_, i32>(0), 2);
    let newcomer = pgdyno.connect(APP_DB).await;
    newcomer.query_typed_one("SELECT 3", &[]).await.unwrap();
}

#[tokio::test]
async fn garbage_instead_of_a_startup_packet() {
    within(60, async {
        let mut pgdyno = pgdyno(&[]).await;
        // A plausible length with an unknown protocol version and junk.
        let mut bytes = vec![0, 0, 0, 24, 0xde, 0xad, 0xbe, 0xef];
        bytes.extend_from_slice(b"\x01\xffnot postgres");
        bytes.resize(24, b'?');
        assert_refused_while_others_work(&mut pgdyno, "garbage bytes", &bytes, false).await;
        // Text from the wrong kind of client entirely.
        let http = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        assert_refused_while_others_work(&mut pgdyno, "an HTTP request", http, false).await;
    })
    .await
}

#[tokio::test]
async fn truncated_startup_packet() {
    within(60, async {
        let mut pgdyno = pgdyno(&[]).await;
        let packet = startup_packet(&[("user", APP_USER), ("database", APP_DB)]);
        let cut = &packet[..packet.len() / 2];
        assert_refused_while_others_work(&mut pgdyno, "half a startup packet", cut, true).await;
        assert_refused_while_others_work(&mut pgdyno, "three bytes", &packet[..3], true).await;
    })
    .await
}

#[tokio::test]
async fn startup_packet_of_absurd_length() {
    within(60, async {
        let mut pgdyno = pgdyno(&[]).await;
        for len in [0x7fff_ffffu32, 0xffff_ffff, 100_000_000] {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&196_608u32.to_be_bytes());
            bytes.extend_from_slice(b"user\0app\0\0");
            let what = format!("a startup packet claiming {len} bytes");
            assert_refused_while_others_work(&mut pgdyno, &what, &bytes, false).await;
        }
        for len in [0u32, 4, 7] {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&196_608u32.to_be_bytes());
            let what = format!("a startup packet claiming {len} bytes");
            assert_refused_while_others_work(&mut pgdyno, &what, &bytes, false).await;
        }
    })
    .await
}

#[tokio::test]
async fn message_over_max_packet_size() {
    within(60, async {
        let mut pgdyno = pgdyno(&["--max-packet-size", "65536"]).await;
        // Under the limit passes.
        let client = pgdyno.connect(APP_DB).await;
        let long = "x".repeat(30_000);
        let row = client
            .query_typed_one(&format!("SELECT length('{long}')"), &[])
            .await
            .expect("a 30 kB query under a 64 kB max_packet_size");
        assert_eq!(row.get::<_, i32>(0), 30_000);

        // Over the limit: only the header is sent, so waiting for the body
        // would hang; pgdyno must decide from the length.
        let mut raw = RawConn::connect(pgdyno.port()).await;
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
            .await
            .expect("raw login");
        let mut bytes = message_header(b'Q', 10_000_000);
        bytes.extend_from_slice(b"SELECT 1");
        let _ = raw.send(&bytes).await;
        let err = assert_refused(&raw.until_closed(5).await, "a 10 MB message");
        if let Some(err) = err {
            assert_eq!(err.code, "08P01", "{err:?}");
        }
        assert!(pgdyno.is_running());
        client
            .query_typed_one("SELECT 1", &[])
            .await
            .expect("other clients unaffected");
    })
    .await
}

#[tokio::test]
async fn silent_client_is_dropped_after_client_login_timeout() {
    within(60, async {
        let mut pgdyno = pgdyno(&["--client-login-timeout", "1"]).await;
        let bystander = pgdyno.connect(APP_DB).await;

        // Connects and says nothing.
        let started = Instant::now();
        let mut silent = RawConn::connect(pgdyno.port()).await;
        assert_refused(&silent.until_closed(6).await, "silence");
        assert!(
            started.elapsed() >= Duration::from_millis(800),
            "closed after {:?}",
            started.elapsed()
        );

        // Starts SCRAM and stalls halfway.
        let mut stalled = RawConn::connect(pgdyno.port()).await;
        let code = stalled
            .start(&[("user", APP_USER), ("database", APP_DB)])
            .await;
        assert_eq!(code.expect("startup accepted"), AUTH_SASL);
        assert_refused(&stalled.until_closed(6).await, "a stalled login");

        // Logged-in clients are not subject to the login timeout.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(pgdyno.is_running());
        bystander
            .query_typed_one("SELECT 1", &[])
            .await
            .expect("the idle logged-in client");
    })
    .await
}

#[tokio::test]
async fn ssl_request_is_answered_n_then_plain_text_login_works() {
    within(60, async {
        let pgdyno = pgdyno(&[]).await;
        let mut raw = RawConn::connect(pgdyno.port()).await;
        raw.send(&ssl_request()).await.unwrap();
        assert_eq!(
            raw.recv_byte().await,
            Some(b'N'),
            "SSLRequest not answered 'N'"
        );
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
            .await
            .expect("login after the refused SSLRequest");
        let msgs = raw.query("SELECT 'plain'").await;
        assert!(msgs.iter().any(|m| m.tag == b'D'), "no DataRow: {msgs:?}");
    })
    .await
}
