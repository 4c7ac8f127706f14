//! The login throttle: each failed login from an address is answered a
//! little later; at auth_failure_limit failures the address is refused
//! (28000) for auth_failure_block_time, even with the right password; a
//! success resets the count; a limit of 0 turns it off.

use super::*;

async fn login_code(pgdyno: &Pgdyno, password: &str) -> Result<(), (String, String)> {
    match connect(&pgdyno.config_as(APP_DB, APP_USER, password)).await {
        Ok(client) => {
            simple(&client, "SELECT 1").await;
            Ok(())
        }
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("login failed without an ErrorResponse: {e}"));
            Err((db.code().code().to_owned(), db.message().to_owned()))
        }
    }
}

#[tokio::test]
async fn throttle_refuses_the_right_password_after_the_limit() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--auth-failure-limit",
            "3",
            "--auth-failure-block-time",
            "30",
            "--auth-failure-delay",
            "0.3",
        ])
        .await;
        for attempt in 1..=3 {
            let (code, message) = login_code(&pgdyno, "wrong-secret")
                .await
                .expect_err("a wrong password");
            assert_eq!(code, "28P01", "attempt {attempt}: {message}");
        }
        let (code, message) = login_code(&pgdyno, APP_PASSWORD)
            .await
            .expect_err("the right password, from a blocked address");
        assert_eq!(code, "28000", "{message}");
        assert!(
            message.contains("too many failed login attempts"),
            "message: {message}"
        );
    })
    .await
}

#[tokio::test]
async fn throttle_block_ends_and_a_success_resets_the_count() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--auth-failure-limit",
            "3",
            "--auth-failure-block-time",
            "2",
            "--auth-failure-delay",
            "0.1",
        ])
        .await;
        // Two failures, a success, two failures: never three in a row.
        for _ in 0..2 {
            for _ in 0..2 {
                let (code, _) = login_code(&pgdyno, "wrong-secret")
                    .await
                    .expect_err("wrong");
                assert_eq!(code, "28P01");
            }
            login_code(&pgdyno, APP_PASSWORD)
                .await
                .expect("a success resets the failure count");
        }
        // Three in a row block, for the block time only.
        for _ in 0..3 {
            login_code(&pgdyno, "wrong-secret")
                .await
                .expect_err("wrong");
        }
        let (code, _) = login_code(&pgdyno, APP_PASSWORD)
            .await
            .expect_err("blocked");
        assert_eq!(code, "28000");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        login_code(&pgdyno, APP_PASSWORD)
            .await
            .expect("the block ends after auth_failure_block_time");
    })
    .await
}

#[tokio::test]
async fn throttle_with_limit_zero_never_blocks() {
    within(60, async {
        let pgdyno = Pgdyno::start(&[
            "--upstream",
            &Cluster::shared().url(APP_DB),
            "--auth-failure-limit",
            "0",
            "--auth-failure-delay",
            "5",
        ])
        .await;
        let started = Instant::now();
        for _ in 0..6 {
            let (code, message) = login_code(&pgdyno, "wrong-secret")
                .await
                .expect_err("a wrong password");
            assert_eq!(code, "28P01", "{message}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "limit 0 still delayed failures ({:?} for six)",
            started.elapsed()
        );
        login_code(&pgdyno, APP_PASSWORD)
            .await
            .expect("limit 0 never blocks");
    })
    .await
}
