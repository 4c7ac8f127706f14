//! Hardened authentication. This file: no password or secret ever reaches
//! pgdyno's output. pgdyno runs at `--log-level trace`, once logging text
//! and once JSON, and every authentication path is taken with distinctive
//! passwords: SCRAM, md5, plain and trust with clients; auth_file users
//! with plain, md5 and SCRAM secrets; md5 and SCRAM pass-through and a
//! cleartext password passed on to PostgreSQL; the upstream URL's
//! password; right and wrong passwords, an unknown user, a backend login
//! that PostgreSQL refuses; the admin console (SHOW, RELOAD) and SIGHUP.
//! Then the log, and what the console showed, are searched for each
//! password, its md5 form and the parts of its SCRAM secret.
//!
//! `hardening`: the rest of it: the small packet limit and the login
//! timeout for clients that have not logged in yet, an unknown user's
//! SCRAM exchange looking like a known user's, and the console for
//! `admin_users` only.

mod hardening;

use crate::harness::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio_postgres::SimpleQueryMessage;

const URL_PW: &str = "Url-Kq83vZp1-pw";
const PLAIN_PW: &str = "Plain-Wm47xTq2-pw";
const SCRAM_PW: &str = "Scram-Hy62bNc9-pw";
const MD5_PW: &str = "Md5-Jr25dLs8-pw";
/// What `sec_stale`'s auth_file line says; PostgreSQL has another one.
const STALE_PW: &str = "Stale-Fe91gUk4-pw";
const WRONG_PW: &str = "Wrong-Tx58cAo3-pw";
const GHOST_PW: &str = "Ghost-Bv16nIe7-pw";

/// A user, a password, and whether the login (with a query) must work:
/// Some(true) yes, Some(false) no, None either.
type Attempt<'a> = (&'a str, &'a str, Option<bool>);

/// The roles, in a cluster of our own (MD5_ROLE's password is ours).
async fn create_roles(cluster: &Cluster, scram_secret: &str) {
    cluster
        .admin()
        .await
        .batch_execute(&format!(
            "CREATE ROLE sec_url LOGIN PASSWORD '{URL_PW}';
             CREATE ROLE sec_plain LOGIN PASSWORD '{PLAIN_PW}';
             CREATE ROLE sec_scram LOGIN PASSWORD '{scram_secret}';
             CREATE ROLE sec_stale LOGIN PASSWORD 'not-what-the-file-says';
             SET password_encryption = 'md5';
             CREATE ROLE {MD5_ROLE} LOGIN PASSWORD '{MD5_PW}';"
        ))
        .await
        .expect("create roles");
}

fn md5_secret(password: &str, user: &str) -> String {
    postgres_protocol::password::md5(password.as_bytes(), user)
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The parts of a `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`
/// secret made from `password`, and the ClientKey that SCRAM pass-through
/// holds, in base64, hex and Rust's Debug form of a byte array.
fn scram_parts(secret: &str, password: &str) -> Vec<String> {
    let (head, keys) = secret.rsplit_once('$').unwrap();
    let salt = B64.decode(head.rsplit_once(':').unwrap().1).unwrap();
    let iterations: u32 = head
        .trim_start_matches("SCRAM-SHA-256$")
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // SaltedPassword = PBKDF2-HMAC-SHA-256, one block.
    let mut block = hmac(password.as_bytes(), &[&salt[..], &[0, 0, 0, 1]].concat());
    let mut salted = block.clone();
    for _ in 1..iterations {
        block = hmac(password.as_bytes(), &block);
        salted.iter_mut().zip(&block).for_each(|(s, b)| *s ^= b);
    }
    let client_key = hmac(&salted, b"Client Key");
    assert_eq!(
        B64.encode(Sha256::digest(&client_key)),
        keys.split(':').next().unwrap(),
        "ClientKey computed wrong"
    );
    let mut parts = vec![secret.to_owned(), keys.to_owned()];
    let raw_keys = keys
        .split(':')
        .map(|k| B64.decode(k).unwrap())
        .chain([client_key]);
    for key in raw_keys {
        parts.push(B64.encode(&key));
        parts.push(key.iter().map(|b| format!("{b:02x}")).collect());
        parts.push(format!("{:?}", &key[..8]).trim_end_matches(']').to_owned());
    }
    parts
}

/// Everything that must not appear in pgdyno's output.
fn secrets(scram_secret: &str) -> Vec<String> {
    let mut all: Vec<String> = [
        URL_PW, PLAIN_PW, SCRAM_PW, MD5_PW, STALE_PW, WRONG_PW, GHOST_PW,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let users = ["sec_url", "sec_plain", "sec_scram", "sec_stale", MD5_ROLE];
    for (user, password) in users
        .iter()
        .zip([URL_PW, PLAIN_PW, SCRAM_PW, STALE_PW, MD5_PW])
    {
        let md5 = md5_secret(password, user);
        all.push(md5[3..].to_owned());
        all.push(md5);
    }
    all.extend(scram_parts(scram_secret, SCRAM_PW));
    all
}

/// Logs in as `user` with `password`, runs a query, returns whether both
/// worked (and checks that against `want`).
async fn attempt(pgdyno: &Pgdyno, db: &str, (user, password, want): Attempt<'_>) {
    let outcome = match connect(&pgdyno.config_as(db, user, password)).await {
        Ok(client) => client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Some(want) = want {
        assert_eq!(
            outcome.is_ok(),
            want,
            "{user} with {password} on {db}: {outcome:?}"
        );
    }
}

/// The text of every row the console returns for `sql`.
async fn console_text(pgdyno: &Pgdyno, sql: &str) -> String {
    let console = connect(&pgdyno.config_as("pgbouncer", "sec_url", URL_PW))
        .await
        .expect("console login as sec_url");
    let mut text = String::new();
    for message in console
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    {
        if let SimpleQueryMessage::Row(row) = message {
            for i in 0..row.len() {
                text.push_str(row.get(i).unwrap_or_default());
                text.push('\t');
            }
            text.push('\n');
        }
    }
    text
}

fn write_userlist(dir: &Path, scram_secret: &str) -> String {
    let path = dir.join("userlist.txt");
    std::fs::write(
        &path,
        format!(
            "\"sec_plain\" \"{PLAIN_PW}\"\n\"sec_scram\" \"{scram_secret}\"\n\
             \"{MD5_ROLE}\" \"{}\"\n\"sec_stale\" \"{STALE_PW}\"\n",
            md5_secret(MD5_PW, MD5_ROLE)
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// Every path with one log format; returns all the output to search.
async fn every_auth_path(cluster: &Cluster, format: &str, scram_secret: &str) -> String {
    let dir = scratch_dir("secrets");
    let userlist = write_userlist(&dir, scram_secret);
    let port = cluster.port();
    let with_user = format!("postgres://sec_url:{URL_PW}@127.0.0.1:{port}/{APP_DB}");
    let no_user = format!("postgres://127.0.0.1:{port}/{APP_DB}");
    let common = [
        "--log-level",
        "trace",
        "--log-format",
        format,
        "--auth-failure-limit",
        "0",
        "--auth-file",
        &userlist,
    ];
    let mut output = String::new();

    // The upstream URL's password; SCRAM with clients; the console; reloads.
    let config = dir.join("pgdyno.toml");
    std::fs::write(
        &config,
        format!("admin_users = \"sec_url\"\n[databases]\n{APP_DB} = \"{with_user}\"\n"),
    )
    .unwrap();
    let args: Vec<&str> = ["--config", config.to_str().unwrap()]
        .into_iter()
        .chain(common)
        .collect();
    let pgdyno = Pgdyno::start(&args).await;
    for a in [
        ("sec_url", URL_PW, Some(true)),
        ("sec_url", WRONG_PW, Some(false)),
        ("ghost", GHOST_PW, Some(false)),
        ("sec_plain", PLAIN_PW, Some(true)),
        ("sec_scram", SCRAM_PW, Some(true)),
        ("sec_scram", WRONG_PW, Some(false)),
    ] {
        attempt(&pgdyno, APP_DB, a).await;
    }
    attempt(&pgdyno, "pgbouncer", ("sec_url", WRONG_PW, Some(false))).await;
    attempt(&pgdyno, "pgbouncer", ("sec_plain", PLAIN_PW, Some(false))).await;
    for sql in [
        "SHOW CONFIG",
        "SHOW DATABASES",
        "SHOW USERS",
        "SHOW POOLS",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW LISTS",
        "RELOAD",
    ] {
        output.push_str(&console_text(&pgdyno, sql).await);
    }
    pgdyno.signal("HUP");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    attempt(&pgdyno, APP_DB, ("sec_plain", PLAIN_PW, Some(true))).await;
    output.push_str(&pgdyno.log());
    drop(pgdyno);

    // Each auth_type, with backends logging in as the client's user.
    let cases: [(&str, &[Attempt]); 4] = [
        (
            // md5 pass-through; SCRAM pass-through (a SCRAM secret gets
            // SCRAM even under md5); a password PostgreSQL refuses.
            "md5",
            &[
                (MD5_ROLE, MD5_PW, Some(true)),
                (MD5_ROLE, WRONG_PW, Some(false)),
                ("sec_plain", PLAIN_PW, Some(true)),
                ("sec_scram", SCRAM_PW, Some(true)),
                ("sec_stale", STALE_PW, Some(false)),
                ("ghost", GHOST_PW, Some(false)),
            ],
        ),
        (
            // The client's cleartext password goes on to PostgreSQL.
            "plain",
            &[
                ("sec_scram", SCRAM_PW, Some(true)),
                ("sec_scram", WRONG_PW, Some(false)),
                ("sec_plain", PLAIN_PW, Some(true)),
                (MD5_ROLE, MD5_PW, Some(true)),
                ("ghost", GHOST_PW, Some(false)),
            ],
        ),
        (
            // SCRAM pass-through; an md5 secret cannot serve SCRAM.
            "scram-sha-256",
            &[
                ("sec_scram", SCRAM_PW, Some(true)),
                ("sec_scram", WRONG_PW, Some(false)),
                ("sec_plain", PLAIN_PW, Some(true)),
                (MD5_ROLE, MD5_PW, Some(false)),
                ("ghost", GHOST_PW, Some(false)),
            ],
        ),
        (
            // No password from clients: the file's secrets log in.
            "trust",
            &[
                ("sec_plain", PLAIN_PW, Some(true)),
                (MD5_ROLE, MD5_PW, Some(true)),
                ("sec_scram", SCRAM_PW, None),
                ("sec_stale", STALE_PW, Some(false)),
            ],
        ),
    ];
    for (auth_type, attempts) in cases {
        let args: Vec<&str> = ["--upstream", &no_user, "--auth-type", auth_type]
            .into_iter()
            .chain(common)
            .collect();
        let pgdyno = Pgdyno::start(&args).await;
        for a in attempts {
            attempt(&pgdyno, APP_DB, *a).await;
        }
        output.push_str(&pgdyno.log());
    }
    output
}

#[tokio::test]
async fn no_password_or_secret_in_any_output() {
    within(240, async {
        let cluster = Cluster::dedicated();
        let scram_secret = postgres_protocol::password::scram_sha_256(SCRAM_PW.as_bytes());
        create_roles(&cluster, &scram_secret).await;
        let secrets = secrets(&scram_secret);
        for format in ["text", "json"] {
            let output = every_auth_path(&cluster, format, &scram_secret).await;
            // The log is there, at trace level, with the logins in it.
            assert!(
                output.contains("login") && output.lines().count() > 50,
                "{format} log looks empty:\n{output}"
            );
            let leaks: Vec<String> = secrets
                .iter()
                .filter(|s| output.contains(s.as_str()))
                .map(|s| {
                    let line = output.lines().find(|l| l.contains(s.as_str())).unwrap();
                    format!("{s}\n    in: {line}")
                })
                .collect();
            assert!(
                leaks.is_empty(),
                "{format} output shows {} secrets:\n{}",
                leaks.len(),
                leaks.join("\n")
            );
        }
    })
    .await
}

/// Waits up to 5 s for pgdyno's log to contain `text`.
async fn log_shows(pgdyno: &Pgdyno, text: &str) -> String {
    for _ in 0..50 {
        let log = pgdyno.log();
        if log.contains(text) {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no {text:?} in pgdyno's log:\n{}", pgdyno.log())
}

#[tokio::test]
async fn a_broken_config_file_is_reported_without_its_password() {
    within(60, async {
        // Nothing needs to listen there: pgdyno connects only for clients.
        let url = format!(
            "postgres://sec_url:{URL_PW}@127.0.0.1:{}/{APP_DB}",
            free_port()
        );
        let path = scratch_dir("secrets-config").join("pgdyno.toml");
        let good = format!("admin_users = \"sec_url\"\nupstream = \"{url}\"\n");
        std::fs::write(&path, &good).unwrap();
        let path_arg = path.to_str().unwrap();
        let pgdyno = Pgdyno::start(&["--config", path_arg, "--log-level", "trace"]).await;
        let console = connect(&pgdyno.config_as("pgbouncer", "sec_url", URL_PW))
            .await
            .expect("console login");
        let mut output = String::new();
        // An unterminated string, and junk after the value.
        for broken in [
            format!("upstream = \"{url}\n"),
            format!("upstream = \"{url}\" x\n"),
        ] {
            std::fs::write(&path, &broken).unwrap();
            pgdyno.signal("HUP");
            let err = console.simple_query("RELOAD").await.expect_err("RELOAD");
            output.push_str(&format!("{:?}\n", err.as_db_error()));
            let (status, log) = run_to_exit(Launch {
                args: &["--config", path_arg],
                env: &[],
            })
            .await;
            assert!(status.is_some_and(|s| !s.success()), "{log}");
            output.push_str(&log);
        }
        output.push_str(&log_shows(&pgdyno, "expected newline").await);
        std::fs::write(&path, &good).unwrap();
        let leaks: Vec<&str> = output.lines().filter(|l| l.contains(URL_PW)).collect();
        assert!(
            leaks.is_empty(),
            "the password shows in:\n{}",
            leaks.join("\n")
        );
    })
    .await
}
