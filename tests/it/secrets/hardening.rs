//! What pgdyno grants a client that has not logged in: a startup packet of
//! at most 10,000 bytes (PostgreSQL's MAX_STARTUP_PACKET_LENGTH) and
//! authentication messages of at most 16 kB whatever max_packet_size says,
//! both refused from the length word alone; client_login_timeout as one
//! deadline that trickling bytes does not extend, on the console too. An
//! unknown user goes through the same SCRAM exchange as a known one (a
//! stable mock salt, the same iteration count, the failure only after the
//! proof, in about the same time) and is asked for the same method under
//! md5 and plain. The console is for admin_users and stats_users only,
//! even for a user whose password is right.
//!
//! (Wrong password vs unknown user messages, absurd startup lengths, and
//! silent or stalled clients past the login timeout are in `auth` and
//! `bad_input`; stats_users limited to SHOW in `admin::views`.)

use crate::harness::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn pgdyno(extra: &[&str]) -> Pgdyno {
    let url = Cluster::shared().url(APP_DB);
    let mut args = vec!["--upstream", &url, "--auth-failure-limit", "0"];
    args.extend_from_slice(extra);
    Pgdyno::start(&args).await
}

/// A startup packet for `app` on appdb of exactly `len` bytes (padded with
/// an ignored parameter).
fn startup_of_len(len: usize) -> Vec<(&'static str, String)> {
    let base = startup_packet(&[
        ("user", APP_USER),
        ("database", APP_DB),
        ("extra_float_digits", ""),
    ])
    .len();
    vec![
        ("user", APP_USER.to_owned()),
        ("database", APP_DB.to_owned()),
        ("extra_float_digits", "3".repeat(len - base)),
    ]
}

/// Sends `bytes` and expects pgdyno to refuse and close within 5 s,
/// without waiting for bytes that are never sent.
async fn refused(pgdyno: &Pgdyno, bytes: &[u8], what: &str) {
    let mut raw = RawConn::connect(pgdyno.port()).await;
    let _ = raw.send(bytes).await;
    if let Some(err) = assert_refused(&raw.until_closed(5).await, what) {
        assert_eq!(err.code, "08P01", "{what}: {err:?}");
    }
}

#[tokio::test]
async fn startup_packet_limit_is_10000_bytes() {
    within(60, async {
        let pgdyno = pgdyno(&[]).await;
        let params = startup_of_len(10_000);
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(startup_packet(&params).len(), 10_000);
        let mut raw = RawConn::connect(pgdyno.port()).await;
        let code = raw.start(&params).await.expect("a 10,000-byte startup");
        raw.authenticate(code, APP_USER, APP_PASSWORD)
            .await
            .expect("login with a 10,000-byte startup packet");

        let params = startup_of_len(10_001);
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let packet = startup_packet(&params);
        assert_eq!(packet.len(), 10_001);
        refused(&pgdyno, &packet, "a 10,001-byte startup packet").await;
        // Only the length word and the version: decided from the length.
        refused(
            &pgdyno,
            &packet[..8],
            "a startup header claiming 10,001 bytes",
        )
        .await;
        let mut header = 65_536u32.to_be_bytes().to_vec();
        header.extend_from_slice(&196_608u32.to_be_bytes());
        refused(&pgdyno, &header, "a startup header claiming 64 kB").await;
        let client = pgdyno.connect(APP_DB).await;
        client
            .simple_query("SELECT 1")
            .await
            .expect("a client after the refusals");
    })
    .await
}

#[tokio::test]
async fn authentication_messages_are_held_to_16_kb_before_login() {
    within(60, async {
        // max_packet_size stays at its 1 GB default: it is for logged-in
        // clients only.
        for (auth_type, method) in [("plain", AUTH_CLEARTEXT), ("scram-sha-256", AUTH_SASL)] {
            let pgdyno = pgdyno(&["--auth-type", auth_type]).await;
            for claimed in [16_385u32, 1_000_000, 100_000_000] {
                let mut raw = RawConn::connect(pgdyno.port()).await;
                let code = raw.start(&[("user", APP_USER), ("database", APP_DB)]).await;
                assert_eq!(code.expect("startup"), method);
                let _ = raw.send(&message_header(b'p', claimed)).await;
                let what = format!("a {claimed}-byte password message under {auth_type}");
                let err = assert_refused(&raw.until_closed(5).await, &what);
                if let Some(err) = err {
                    assert_eq!(err.code, "08P01", "{what}: {err:?}");
                }
            }
        }
        // Under the limit, a long wrong password is judged as a password.
        let pgdyno = pgdyno(&["--auth-type", "plain"]).await;
        let long = "w".repeat(15_000);
        let mut raw = RawConn::connect(pgdyno.port()).await;
        let err = raw
            .login(APP_USER, &long, APP_DB)
            .await
            .expect_err("a 15,000-character wrong password");
        assert_eq!(err.code, "28P01", "{err:?}");
    })
    .await
}

/// Connects, sends `bytes` one at a time every `gap`, and returns how long
/// after connecting pgdyno closed the connection (panics after 10 s).
async fn trickle(port: u16, bytes: Vec<u8>, gap: Duration) -> Duration {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        for b in bytes {
            if write.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
        std::future::pending::<()>().await;
    });
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut sink))
        .await
        .expect("pgdyno kept a trickling client past 10 s")
        .ok();
    writer.abort();
    started.elapsed()
}

#[tokio::test]
async fn login_timeout_is_one_deadline_that_trickling_does_not_extend() {
    within(60, async {
        let pgdyno = pgdyno(&["--client-login-timeout", "1", "--admin-users", APP_USER]).await;
        // 40-odd bytes at 150 ms each would take 6 s.
        let packet = startup_packet(&[("user", APP_USER), ("database", APP_DB)]);
        let closed = trickle(pgdyno.port(), packet, Duration::from_millis(150)).await;
        assert!(
            closed >= Duration::from_millis(800) && closed < Duration::from_secs(3),
            "a trickled startup packet was cut off after {closed:?}"
        );

        // The console's login has the same deadline: stall mid-SCRAM.
        let mut stalled = RawConn::connect(pgdyno.port()).await;
        let started = Instant::now();
        let code = stalled
            .start(&[("user", APP_USER), ("database", "pgbouncer")])
            .await;
        assert_eq!(code.expect("console startup"), AUTH_SASL);
        assert_refused(&stalled.until_closed(5).await, "a stalled console login");
        assert!(started.elapsed() < Duration::from_secs(3));
        pgdyno
            .connect(APP_DB)
            .await
            .simple_query("SELECT 1")
            .await
            .unwrap();
    })
    .await
}

/// A SCRAM exchange by hand: the server-first message's salt and
/// iteration count, the ErrorResponse (or None on success) and how long
/// the answer to the proof took.
struct Exchange {
    salt: Vec<u8>,
    iterations: String,
    error: Option<ErrorFields>,
    final_took: Duration,
}

async fn scram_exchange(port: u16, user: &str, password: &str) -> Exchange {
    let mut raw = RawConn::connect(port).await;
    let code = raw.start(&[("user", user), ("database", APP_DB)]).await;
    assert_eq!(code.expect("startup"), AUTH_SASL, "{user} not offered SASL");
    let mut out = BytesMut::new();
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out).unwrap();
    raw.send(&out.split()).await.unwrap();
    let msg = raw.recv().await.expect("SASLContinue");
    assert_eq!(msg.tag, b'R', "{user}: no SASLContinue: {msg:?}");
    assert_eq!(&msg.body[..4], &11i32.to_be_bytes(), "{user}: {msg:?}");
    let server_first = String::from_utf8(msg.body[4..].to_vec()).unwrap();
    let field = |k: &str| {
        server_first
            .split(',')
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {server_first}"))
            .to_owned()
    };
    let salt = B64.decode(field("s=")).expect("salt in base64");
    let iterations = field("i=");
    scram.update(server_first.as_bytes()).expect("server-first");
    frontend::sasl_response(scram.message(), &mut out).unwrap();
    let sent = Instant::now();
    raw.send(&out.split()).await.unwrap();
    let msg = raw.recv().await.expect("answer to the proof");
    let final_took = sent.elapsed();
    let error = (msg.tag == b'E').then(|| error_fields(&msg));
    Exchange {
        salt,
        iterations,
        error,
        final_took,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn an_unknown_user_gets_the_same_scram_exchange_as_a_known_one() {
    within(90, async {
        let pgdyno = pgdyno(&[]).await;
        let port = pgdyno.port();
        let known = scram_exchange(port, APP_USER, "not-the-password").await;
        let ghost = scram_exchange(port, "ghost_user", "whatever").await;
        let again = scram_exchange(port, "ghost_user", "whatever").await;
        let other = scram_exchange(port, "other_ghost", "whatever").await;
        let right = scram_exchange(port, APP_USER, APP_PASSWORD).await;
        assert!(right.error.is_none(), "{:?}", right.error);
        assert_eq!(right.salt, known.salt, "a real user's salt is stable");
        // The mock salt: as long as a real one, the same each time for
        // one name (as a real user's is), different for another name.
        assert_eq!(ghost.salt.len(), known.salt.len());
        assert_eq!(ghost.salt, again.salt, "an unknown user's salt changes");
        assert_ne!(ghost.salt, other.salt);
        assert_eq!(ghost.iterations, known.iterations);
        // Refused only after the proof, with the same message.
        let (k, g) = (known.error.unwrap(), ghost.error.unwrap());
        assert_eq!((k.code.as_str(), g.code.as_str()), ("28P01", "28P01"));
        assert_eq!(
            k.message.replace(APP_USER, "U"),
            g.message.replace("ghost_user", "U")
        );

        // About the same time to refuse either (throttle off).
        let (mut known_t, mut ghost_t) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            known_t.push(scram_exchange(port, APP_USER, "nope").await.final_took);
            ghost_t.push(scram_exchange(port, "ghost_user", "nope").await.final_took);
        }
        let (known_t, ghost_t) = (median(known_t), median(ghost_t));
        let gap = known_t.abs_diff(ghost_t);
        assert!(
            gap < Duration::from_millis(50),
            "refusing a wrong password took {known_t:?}, an unknown user {ghost_t:?}"
        );

        // md5 and plain ask an unknown user for the same method.
        for (auth_type, method) in [("md5", AUTH_MD5), ("plain", AUTH_CLEARTEXT)] {
            let pgdyno = self::pgdyno(&["--auth-type", auth_type]).await;
            for user in [APP_USER, "ghost_user"] {
                let mut raw = RawConn::connect(pgdyno.port()).await;
                let code = raw.start(&[("user", user), ("database", APP_DB)]).await;
                assert_eq!(code.expect("startup"), method, "{user} under {auth_type}");
                let err = raw
                    .authenticate(method, user, "nope")
                    .await
                    .expect_err("a wrong password");
                assert_eq!(err.code, "28P01", "{user} under {auth_type}: {err:?}");
            }
        }
    })
    .await
}

/// The mock salt is keyed with a secret of the process (PostgreSQL's
/// mock_auth_nonce): steady for one pgdyno, so a user seems to exist, but
/// not computable from the name, so nobody can check it against one.
#[tokio::test]
async fn the_mock_salt_cannot_be_computed_from_the_user_name() {
    within(60, async {
        let first = pgdyno(&[]).await;
        let second = pgdyno(&[]).await;
        let salt = |p: u16| async move { scram_exchange(p, "ghost_user", "whatever").await.salt };
        let a = salt(first.port()).await;
        assert_eq!(a, salt(first.port()).await, "one pgdyno, one salt per name");
        assert_ne!(
            a,
            salt(second.port()).await,
            "two pgdyno processes gave an unknown user the same salt: it is computable"
        );
        let predictable = Sha256::digest(b"pgdyno-decoy-ghost_user");
        assert_ne!(a, predictable[..16]);
    })
    .await
}

/// The console login's SQLSTATE, or None if it let `user` in.
async fn console_refusal(pgdyno: &Pgdyno, db: &str, user: &str, password: &str) -> Option<String> {
    match connect(&pgdyno.config_as(db, user, password)).await {
        Ok(_) => None,
        Err(e) => Some(sqlstate(&e).unwrap_or("no SQLSTATE").to_owned()),
    }
}

#[tokio::test]
async fn the_console_is_for_admin_and_stats_users_only() {
    within(60, async {
        // No admin_users at all: the pool's own user, with the right
        // password, is still refused the console, on both its names.
        let pgdyno = self::pgdyno(&[]).await;
        pgdyno
            .connect(APP_DB)
            .await
            .simple_query("SELECT 1")
            .await
            .unwrap();
        for db in ["pgbouncer", "pgdyno"] {
            let refusal = console_refusal(&pgdyno, db, APP_USER, APP_PASSWORD).await;
            assert_eq!(
                refusal.as_deref(),
                Some("28000"),
                "{db} without admin_users"
            );
        }
        drop(pgdyno);

        // admin_users names someone else; app is a stats user, which may
        // SHOW but not RELOAD (nor anything else).
        let dir = scratch_dir("console-users");
        let userlist = dir.join("userlist.txt");
        std::fs::write(&userlist, "\"boss\" \"boss-secret\"\n").unwrap();
        let pgdyno = self::pgdyno(&[
            "--auth-file",
            userlist.to_str().unwrap(),
            "--admin-users",
            "boss",
        ])
        .await;
        for db in ["pgbouncer", "pgdyno"] {
            let refusal = console_refusal(&pgdyno, db, APP_USER, APP_PASSWORD).await;
            assert_eq!(refusal.as_deref(), Some("28000"), "{db}: app is no admin");
            let refusal = console_refusal(&pgdyno, db, "boss", "wrong").await;
            assert_eq!(
                refusal.as_deref(),
                Some("28P01"),
                "{db}: boss, wrong password"
            );
            assert_eq!(
                console_refusal(&pgdyno, db, "boss", "boss-secret").await,
                None
            );
        }
        drop(pgdyno);
        let pgdyno = self::pgdyno(&["--stats-users", APP_USER]).await;
        let stats = pgdyno.connect("pgdyno").await;
        stats.simple_query("SHOW POOLS").await.expect("SHOW");
        for sql in ["RELOAD", "SHUTDOWN", "KILL", "RECONNECT appdb", "pause"] {
            let err = stats
                .simple_query(sql)
                .await
                .err()
                .unwrap_or_else(|| panic!("a stats user ran {sql}"));
            assert!(err.as_db_error().is_some(), "{sql}: {err}");
        }
        assert!(!stats.is_closed());
        pgdyno
            .connect(APP_DB)
            .await
            .simple_query("SELECT 1")
            .await
            .unwrap();
    })
    .await
}
