//! `pidfile` and `logfile`, as PgBouncer's: the pid is there while pgdyno
//! runs and a second pgdyno on the same file will not start; log lines go
//! to the file too, and a reload opens it again after log rotation.

use super::pgdyno;
use crate::harness::*;

#[tokio::test]
async fn pidfile_holds_the_pid_and_keeps_a_second_instance_out() {
    within(60, async {
        let path = scratch_dir("pidfile").join("pgdyno.pid");
        let path_text = path.to_str().unwrap();
        let first = pgdyno(&["--pidfile", path_text]).await;
        let written = std::fs::read_to_string(&path).expect("the pidfile");
        assert_eq!(written.trim(), first.pid().to_string());

        let url = Cluster::shared().url(APP_DB);
        let port = free_port().to_string();
        let listen = format!("127.0.0.1:{port}");
        let args = [
            "--upstream",
            &url,
            "--listen",
            &listen,
            "--pidfile",
            path_text,
        ];
        let (status, log) = run_to_exit(Launch {
            args: &args,
            env: &[],
        })
        .await;
        assert!(status.is_some_and(|s| !s.success()), "{log}");
        assert!(log.contains("pidfile") && log.contains("running"), "{log}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            written,
            "left alone"
        );

        first.signal("TERM");
        let running = std::cell::RefCell::new(first);
        eventually(10, "pgdyno exits on SIGTERM", || async {
            !running.borrow_mut().is_running()
        })
        .await;
        assert!(!path.exists(), "removed at exit");
    })
    .await
}

#[tokio::test]
async fn logfile_gets_the_lines_and_is_opened_again_on_reload() {
    within(60, async {
        let dir = scratch_dir("logfile");
        let path = dir.join("pgdyno.log");
        let pgdyno = pgdyno(&["--logfile", path.to_str().unwrap()]).await;
        let logins = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .matches("\"event\":\"login\"")
                .count()
        };
        drop(pgdyno.connect(APP_DB).await);
        eventually(10, "a login line in the logfile", || async {
            logins(&path) == 1
        })
        .await;
        assert!(pgdyno.log().contains("\"event\":\"login\""), "stderr too");

        // Log rotation: the file is moved away, then pgdyno is told.
        let rotated = dir.join("pgdyno.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        pgdyno.signal("HUP");
        eventually(10, "the logfile made again", || async { path.exists() }).await;
        drop(pgdyno.connect(APP_DB).await);
        eventually(10, "the next login in the new file", || async {
            logins(&path) == 1
        })
        .await;
        assert_eq!(logins(&rotated), 1, "the old file got no more");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains('\u{1b}'), "no colour escapes in the file");
    })
    .await
}
