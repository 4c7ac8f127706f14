//! Cancel requests through pgdyno: a client's cancel stops the query it is
//! running, on whichever backend runs it; a client with nothing running
//! cancels nothing; and a cancel that arrives as the client's query ends
//! never hits the next client's query on that backend.
//!
//! One backend in the pool, so "the next client on that backend" is every
//! other client.

use crate::harness::*;
use bytes::BytesMut;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, NoTls};

async fn pgdyno() -> Pgdyno {
    Pgdyno::start(&[
        "--upstream",
        &Cluster::shared().url(APP_DB),
        "--pool-mode",
        "transaction",
        "--pool-size",
        "1",
    ])
    .await
}

/// `SELECT pg_sleep(secs)`; Ok with how long it took, or the SQLSTATE.
async fn sleep_on(client: &Client, secs: f64) -> Result<Duration, String> {
    let started = Instant::now();
    match client
        .simple_query(&format!("SELECT pg_sleep({secs})"))
        .await
    {
        Ok(_) => Ok(started.elapsed()),
        Err(e) => Err(sqlstate(&e).unwrap_or("no SQLSTATE").to_owned()),
    }
}

/// Sends a CancelRequest with this key to `port` and waits until the
/// other end closes the connection, as libpq does.
async fn send_cancel(port: u16, pid: i32, key: i32) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect for CancelRequest");
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(pid, key, &mut out);
    stream.write_all(&out).await.expect("send CancelRequest");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the CancelRequest connection was not closed within 10 s")
        .ok();
}

#[tokio::test]
async fn a_cancelled_sleep_fails_with_57014_and_the_queue_moves_on() {
    within(60, async {
        let pgdyno = pgdyno().await;
        let a = pgdyno.connect(APP_DB).await;
        let b = pgdyno.connect(APP_DB).await;
        let token = a.cancel_token();
        let started = Instant::now();
        let waiting_b = async {
            // Queued behind A's query for the one backend.
            tokio::time::sleep(Duration::from_millis(200)).await;
            sleep_on(&b, 0.0).await
        };
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            token.cancel_query(NoTls).await
        };
        let (slept, b_result, cancelled) = tokio::join!(sleep_on(&a, 30.0), waiting_b, cancel);
        cancelled.expect("CancelRequest to pgdyno");
        assert_eq!(slept, Err("57014".to_owned()), "A's pg_sleep(30)");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the cancel took {:?} to take effect",
            started.elapsed()
        );
        b_result.expect("B's query, queued behind the cancelled one");
        sleep_on(&a, 0.0).await.expect("A's next query");
    })
    .await
}

#[tokio::test]
async fn a_cancel_from_an_idle_client_cancels_nothing() {
    within(60, async {
        let pgdyno = pgdyno().await;
        let a = pgdyno.connect(APP_DB).await;
        let b = pgdyno.connect(APP_DB).await;
        // A has used the backend B is about to use, and is now idle.
        sleep_on(&a, 0.0).await.unwrap();
        let token = a.cancel_token();

        // A cancel, then B's query.
        token.cancel_query(NoTls).await.expect("idle cancel");
        let took = sleep_on(&b, 1.0)
            .await
            .expect("B right after A's idle cancel");
        assert!(
            took >= Duration::from_millis(950),
            "B's sleep took {took:?}"
        );

        // A cancel while B's query runs on the backend A used last.
        let cancel_during = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel_query(NoTls).await
        };
        let (b_result, cancelled) = tokio::join!(sleep_on(&b, 1.0), cancel_during);
        cancelled.expect("idle cancel during B's query");
        b_result.expect("B while idle A sent a cancel");

        // A key pgdyno never issued cancels nothing either.
        let with_bogus = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            send_cancel(pgdyno.port(), 4242, 0x1234_5678).await;
        };
        let (b_result, ()) = tokio::join!(sleep_on(&b, 1.0), with_bogus);
        b_result.expect("B after a cancel with an unknown key");

        sleep_on(&a, 0.0).await.expect("A's own next query");
    })
    .await
}

/// A runs a short query and its cancel is sent around the moment the query
/// ends; B's query is queued for the same backend and starts as soon as A's
/// is done. Whenever the cancel lands, it must never stop B's query.
#[tokio::test]
async fn a_late_cancel_never_hits_the_next_clients_query() {
    within(120, async {
        let pgdyno = pgdyno().await;
        let a = pgdyno.connect(APP_DB).await;
        let b = pgdyno.connect(APP_DB).await;
        let token = a.cancel_token();
        let (mut a_cancelled, mut a_finished) = (0, 0);
        for i in 0..30u64 {
            let a_query = sleep_on(&a, 0.1);
            let b_query = async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                sleep_on(&b, 0.2).await
            };
            let (a_result, b_result, cancelled) = if i % 3 == 2 {
                // The cancel goes out the moment A has its answer.
                let a_then_cancel = async {
                    let result = a_query.await;
                    (result, token.cancel_query(NoTls).await)
                };
                let ((a_result, cancelled), b_result) = tokio::join!(a_then_cancel, b_query);
                (a_result, b_result, cancelled)
            } else {
                // Sent between 60 ms and 160 ms in: around A's end.
                let delay = Duration::from_millis(60 + 5 * (i % 21));
                let cancel = async {
                    tokio::time::sleep(delay).await;
                    token.cancel_query(NoTls).await
                };
                tokio::join!(a_query, b_query, cancel)
            };
            cancelled.unwrap_or_else(|e| panic!("round {i}: CancelRequest failed: {e}"));
            match a_result {
                Ok(_) => a_finished += 1,
                Err(code) if code == "57014" => a_cancelled += 1,
                Err(code) => panic!("round {i}: A failed with {code}"),
            }
            if let Err(code) = b_result {
                panic!("round {i}: B's query, after A's, failed with {code} (A's cancel hit it)");
            }
        }
        eprintln!("A's query: cancelled {a_cancelled} times, finished {a_finished} times");
        // Otherwise no cancel reached a running query, and the rounds above
        // proved nothing about timing.
        assert!(a_cancelled > 0, "no cancel stopped A's query in 30 rounds");
        sleep_on(&a, 0.0).await.expect("A at the end");
        sleep_on(&b, 0.0).await.expect("B at the end");
    })
    .await
}

/// The BackendKeyData a client gets is its own, not a backend's: two
/// clients sharing one backend get different keys, and each key cancels
/// only its own client's query.
#[tokio::test]
async fn each_client_has_its_own_cancel_key() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--pool-mode",
            "transaction",
            "--pool-size",
            "2",
        ])
        .await;
        let mut a = pgdyno.connect_raw(APP_DB).await;
        let mut b = pgdyno.connect_raw(APP_DB).await;
        let key_a = a.backend_key().expect("BackendKeyData for A");
        let key_b = b.backend_key().expect("BackendKeyData for B");
        assert_ne!(key_a, key_b, "two clients got the same cancel key");

        // Both run a long query, each on its own backend; cancel only B's.
        a.send(&Batch::new().query("SELECT pg_sleep(3), 'a'").into_bytes())
            .await
            .unwrap();
        b.send(&Batch::new().query("SELECT pg_sleep(30), 'b'").into_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        send_cancel(pgdyno.port(), key_b.0, key_b.1).await;
        let b_msgs = b.until_ready().await;
        assert_eq!(
            errors(&b_msgs).first().map(|e| e.code.as_str()),
            Some("57014")
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let a_msgs = a.until_ready().await;
        assert!(
            errors(&a_msgs).is_empty(),
            "A's query: {:?}",
            errors(&a_msgs)
        );
        assert_eq!(rows(&a_msgs)[0][1].as_deref(), Some("a"));
    })
    .await
}

/// Peering: two pgdynos (as behind one port with so_reuseport), peer ids 1
/// and 2, each told in `[peers]` where the other takes cancels. A cancel
/// for a client of the first that reaches the second is passed on and stops
/// the query. Without peering the second does not know the key: the query
/// runs to its end.
#[tokio::test]
async fn a_cancel_that_reaches_another_peer_is_passed_on() {
    within(60, async {
        let dir = scratch_dir("peers");
        let url = Cluster::shared().url(APP_DB);
        for peering in [true, false] {
            let ports = [free_port(), free_port()];
            let mut peers = Vec::new();
            for (n, port) in ports.iter().enumerate() {
                let path = dir.join(format!("peer{n}-{peering}.toml"));
                let id = if peering { n + 1 } else { 0 };
                std::fs::write(
                    &path,
                    format!(
                        "peer_id = {id}\n[databases]\n{APP_DB} = \"{url}\"\n[peers]\n\
                         1 = \"host=127.0.0.1 port={}\"\n2 = \"host=127.0.0.1 port={}\"\n",
                        ports[0], ports[1]
                    ),
                )
                .unwrap();
                let args = ["--config", path.to_str().unwrap()];
                let launch = Launch {
                    args: &args,
                    env: &[],
                };
                peers.push(
                    Pgdyno::launch_on(*port, &launch)
                        .await
                        .expect("start a peer"),
                );
            }
            let mut raw = RawConn::connect(ports[0]).await;
            raw.login(APP_USER, APP_PASSWORD, APP_DB)
                .await
                .expect("login");
            let (pid, key) = raw.backend_key().expect("BackendKeyData");
            let started = Instant::now();
            raw.send(&Batch::new().query("SELECT pg_sleep(3)").into_bytes())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            send_cancel(ports[1], pid, key).await;
            let mut error = None;
            while let Some(msg) = raw.recv().await {
                match msg.tag {
                    b'E' => error = Some(error_fields(&msg).code),
                    b'Z' => break,
                    _ => {}
                }
            }
            if peering {
                assert_eq!(error.as_deref(), Some("57014"), "the cancel passed on");
                assert!(started.elapsed() < Duration::from_millis(2500));
            } else {
                assert_eq!(error, None, "no peering: the cancel reaches nobody");
                assert!(started.elapsed() >= Duration::from_secs(3));
            }
        }
    })
    .await
}
